"""The `rl` stage: a policy trained against a scorer with an RL estimator (paper section 2.2).

The default estimator is the paper's REINFORCE with a value baseline and a KL penalty to the
SFT policy; `estimator=rl.Ppo.build`, `rl.Rloo.build` or `rl.Grpo.build` runs PPO, RLOO or
GRPO instead. The scorer is a reward model (distilled RLAIF, RLHF), the AI labeler's direct
1-10 score (direct RLAIF) or any Python function. Online AI feedback is
`estimator=rl.OnlineDpo.build` with `scorer=scorers.PairwiseScorer()`: DPO steps on two samples
per prompt the labeler compares. The rollout loop is `rl.RolloutLoop`. Writes metrics.jsonl,
tensorboard/, samples.jsonl, curves.png, summary.json and checkpoints (with rl_state.json beside
them) under workdir; a rerun resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import optax

from rlaif_jax import data, generation, models, optimizers, partitioning, rl, sampling, scorers, trainer, writers
from rlaif_jax.stages.base import stage

NORMALIZATIONS = ("none", "running", "rm_stats")
CURVES = ("reward_raw_mean", "reward_mean", "kl", "kl_coef", "entropy", "response_length", "value_loss")
CURVES += ("explained_variance", "group_reward_std")  # the last: value-free estimators over K responses per prompt


@stage(curves=CURVES, title="RL")
def run_rl(
  workdir: str,
  policy: models.ModelSource,
  scorer: Callable,
  task: str = "tldr_prompts",
  split: str = "train",
  limit: int | None = None,
  config: rl.RLConfig = rl.RLConfig(),
  sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(max_new_tokens=64, temperature=0.9),
  stop: generation.StopRule = generation.StopRule(),
  estimator: Callable = rl.Reinforce.build,
  max_prompt_len: int = 448,
  batch_size: int = 16,
  num_iterations: int = 100,
  policy_optimizer: optax.GradientTransformation | None = None,
  value_optimizer: optax.GradientTransformation | None = None,
  mesh_shape: dict | None = None,
  rules=partitioning.DEFAULT_RULES,
  seed: int = 0,
  checkpoint_every: int = 10,
  keep_checkpoints: int = 2,
  sample_every: int = 10,
  num_samples: int = 4,
  record_rollouts: bool = False,
  tensorboard: bool = True,
  progress: bool = True,
  lora: models.LoraConfig | None = None,
) -> dict:
  """Trains from the policy source (the frozen reference: an SFT checkpoint, a pretrained
  model, or a random init) for num_iterations rollout batches of batch_size prompts.
  scorer: a scorers.RewardModelScorer, DirectScorer, PairwiseScorer or any (inputs, responses)
  -> rewards function; estimator(model, max_prompt_len, config) builds the RL estimator;
  record_rollouts writes every response, its raw score and the scorer's details. lora: the policy
  (and value model) train adapters on the reference's frozen weights, one copy (models.lora)."""
  mesh = partitioning.make_mesh(mesh_shape)
  scorer = _checked(scorer, config, batch_size, mesh)
  prompts = [ex["inputs"] for ex in data.load_examples(task, split, limit)]
  if not prompts:
    raise ValueError(f"run_rl: task {task!r} split {split!r} has no prompts")
  reference = policy.load(mesh, rules, lora=lora, seed=seed)  # the frozen pi_SFT (with fresh adapters at zero)
  context = scorers.ScoringContext(mesh, max_prompt_len + sampling_config.max_new_tokens, policy, "run_rl", rules)
  est = estimator(reference.model, max_prompt_len, config)
  optimizer = est.optimizer(policy_optimizer or optimizers.adamw(1e-5), value_optimizer or optimizers.adamw(1e-5))
  frozen = lora and models.lora.frozen_part(est.initial_params(reference.params, jax.random.PRNGKey(seed)))
  rl_trainer = trainer.Trainer(
    est.loss_fn, est.init_params, optimizer, mesh, rules, norms_per_model=True, frozen=frozen
  )
  rows = batch_size * est.samples_per_prompt
  generator = rl.rollout_generator(
    reference.model, reference.vocab, sampling_config, rows, max_prompt_len, mesh, rules, stop
  )
  settings = rl.LoopSettings(
    batch_size=batch_size, num_iterations=num_iterations, max_prompt_len=max_prompt_len,
    checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, sample_every=sample_every,
    num_samples=num_samples, record_rollouts=record_rollouts, seed=seed, progress=progress, tensorboard=tensorboard,
  )  # fmt: skip
  loop = rl.RolloutLoop(est, rl_trainer, generator, scorers.prepare(scorer, context), config, settings, workdir)
  loop.run(prompts, reference.params, reference.adapters_of)
  return _summary(workdir, loop, num_iterations, len(prompts), scorers.source_of(scorer, policy))


def _checked(scorer, config: rl.RLConfig, batch_size: int, mesh):
  """The scorer, normalized with the reward model's statistics when the config asks for it;
  settings that cannot work fail here, before anything loads."""
  if config.reward_normalization not in NORMALIZATIONS:
    raise ValueError(f"RLConfig.reward_normalization={config.reward_normalization!r}; one of {NORMALIZATIONS}")
  if config.update_epochs * config.minibatches < 1 or batch_size % config.minibatches:
    raise ValueError(f"batch_size={batch_size} must split into RLConfig.minibatches={config.minibatches} (>= 1)")
  partitioning.check_batch_fits(batch_size, mesh)
  partitioning.check_batch_fits(batch_size // config.minibatches, mesh, "batch_size / RLConfig.minibatches")
  if isinstance(scorer, scorers.HumanScorer):
    raise ValueError("run_rl.scorer: HumanScorer cannot score new samples; use a RewardModelScorer or DirectScorer")
  if config.reward_normalization == "rm_stats":
    if not isinstance(scorer, scorers.RewardModelScorer):
      raise ValueError("RLConfig.reward_normalization='rm_stats' needs run_rl.scorer=@scorers.RewardModelScorer()")
    scorer = dataclasses.replace(scorer, normalize=True)
  return scorer


def _summary(workdir: str, loop: rl.RolloutLoop, iterations: int, prompts: int, reward_source: str) -> dict:
  """summary.json: reward_first/last are the first and last values of the estimator's progress
  metric (the mean raw reward, except where the scores say nothing of progress, e.g. a pairwise
  labeler's p and 1 - p), named by progress_metric."""
  progress = loop.estimator.progress_metric
  rows = writers.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
  rewards = [r[progress] for r in rows if progress in r]
  summary = {
    "iterations": iterations,
    "reward_source": reward_source,  # compared with the judge's weights by the report
    "prompts": prompts,
    "prompts_truncated": loop.prompts_truncated,
    "method": loop.estimator.method,  # the report's method column
    "progress_metric": progress,
    "reward_first": rewards[0] if rewards else None,
    "reward_last": rewards[-1] if rewards else None,
    "kl_last": _last(rows, "kl"),
    "explained_variance_last": _last(rows, "explained_variance"),  # of the value baseline (estimators with one)
    "kl_coef_final": loop.kl_coef,
    "unlabeled_pairs": getattr(loop.scorer, "unlabeled", None),  # a pairwise labeler's pairs too long to show
    "compilations": loop.compilations(),
    "checkpoints": loop.checkpointer.directory,
    "samples_file": loop.samples_path,
  }
  return summary


def _last(rows: list[dict], key: str):
  """The last logged value of a metric, or None."""
  return next((r[key] for r in reversed(rows) if key in r), None)
