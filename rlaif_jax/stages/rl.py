"""The `rl` stage: REINFORCE with a value baseline and a KL penalty to the SFT policy.

Each iteration samples one response per prompt from the current policy with the KV-cache
sampler, cuts it at EOS (or the first newline), scores it with a reward model (distilled
RLAIF, RLHF), the AI labeler's direct 1-10 score (direct RLAIF) or a Python function, shapes
the reward, computes reference log-probs, values, returns and advantages in one jitted pass,
then runs `update_epochs` x `minibatches` jitted updates of policy and value. Every function
on device is compiled once: shapes are fixed by batch_size, max_prompt_len and
max_new_tokens. Checkpoints hold policy, value and both optimizers; the KL coefficient and
the running reward moments are saved beside them (rl_state.json), so a rerun resumes
exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax

from rlaif_jax import data, models, optimizers, partitioning, plots, reward, rl, sampling, trainer, writers
from rlaif_jax.checkpoints import Checkpointer
from rlaif_jax.labeling.labeler import load_model_params
from rlaif_jax.stages.generate import decode_responses, local_rows, stop_ids, to_host
from rlaif_jax.stages.scorers import build_scorer, load_examples, vocabulary
from rlaif_jax.writers import MetricsWriter

STATE_FILE = "rl_state.json"
NORMALIZATIONS = ("none", "running", "rm_stats")
CURVES = ("reward_raw_mean", "reward_mean", "kl", "kl_coef") + (
  "entropy",
  "response_length",
  "value_loss",
  "explained_variance",
)


def run_rl(
  workdir: str,
  model_config: models.TransformerConfig,
  sft_checkpoint: str | None = None,
  task: str = "tldr_prompts",
  split: str = "train",
  limit: int | None = None,
  config: rl.RLConfig = rl.RLConfig(),
  scorer: str = "rm",
  rm_workdir: str | None = None,
  labeler_checkpoint: str | None = None,
  labeler_task: str = "summarization",
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
  tensorboard: bool = True,
  progress: bool = True,
  scorer_fn: Callable[[Sequence[str], Sequence[str]], np.ndarray] | None = None,
  pretrained: str | None = None,
  labeler_pretrained: str | None = None,
) -> dict:
  """Trains policy and value from sft_checkpoint (random init if None) for num_iterations
  rollout batches of batch_size prompts. Writes metrics.jsonl, tensorboard/, samples.jsonl,
  curves.png and summary.json under workdir. scorer_fn replaces `scorer` (Python callers);
  pretrained names the model the SFT run started from, for its vocabulary."""
  if config.reward_normalization not in NORMALIZATIONS:
    raise ValueError(f"RLConfig.reward_normalization={config.reward_normalization!r}; one of {NORMALIZATIONS}")
  if config.reward_normalization == "rm_stats" and (scorer_fn is not None or scorer != "rm"):
    raise ValueError("RLConfig.reward_normalization='rm_stats' needs run_rl.scorer='rm'")
  if scorer == "human" and scorer_fn is None:
    raise ValueError("run_rl.scorer='human' cannot score new samples; use 'rm' (RLHF) or 'direct'")
  updates = config.update_epochs * config.minibatches
  if updates < 1 or batch_size % config.minibatches:
    raise ValueError(f"batch_size={batch_size} must split into RLConfig.minibatches={config.minibatches} (>= 1)")
  vocab = vocabulary(pretrained)
  mesh = partitioning.make_mesh(mesh_shape)
  partitioning.check_batch_fits(batch_size, mesh)
  partitioning.check_batch_fits(batch_size // config.minibatches, mesh, "batch_size / RLConfig.minibatches")
  examples = load_examples(task, split, limit)
  if not examples:
    raise ValueError(f"run_rl: task {task!r} split {split!r} has no prompts")
  prompts = [ex["inputs"] for ex in examples]
  prompt_ids = [list(vocab.encode(p)) for p in prompts]
  truncated = sum(len(p) > max_prompt_len for p in prompt_ids)
  score = scorer_fn or build_scorer(
    scorer,
    examples,
    model_config,
    rm_workdir,
    labeler_checkpoint,
    labeler_task,
    max_prompt_len + config.max_new_tokens,
    mesh,
    stage="run_rl",
    normalize_rm=config.reward_normalization == "rm_stats",
    vocab=vocab,
    labeler_pretrained=labeler_pretrained,
  )

  policy = models.Transformer(model_config)
  value = models.Transformer(model_config, scalar_head=True)
  objective = rl.RLObjective(policy, value, max_prompt_len, config)

  def init_params(rng):
    r_policy, r_value = jax.random.split(rng)
    return {
      rl.POLICY: models.init_params(policy, r_policy, boxed=True),
      rl.VALUE: models.init_params(value, r_value, boxed=True),
    }

  rl_trainer = trainer.Trainer(
    objective.loss_fn,
    init_params,
    rl.two_optimizers(policy_optimizer or optimizers.adamw(1e-5), value_optimizer or optimizers.adamw(1e-5)),
    mesh,
    rules,
    norms_per_model=True,
  )
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), 1, keep_checkpoints)
  rng = jax.random.PRNGKey(seed)
  ref_params = load_model_params(policy, mesh, sft_checkpoint, seed, rules)  # frozen pi_SFT
  initial = None
  if checkpointer.latest_step() is None:  # init_state copies these, so donating the state spares ref_params
    initial = {rl.POLICY: ref_params, rl.VALUE: reward.init_from_lm(value, ref_params, jax.random.fold_in(rng, 1))}
  state = rl_trainer.restore_or_init(rng, checkpointer, initial)
  start = int(state.step) // updates
  state_path = os.path.join(workdir, STATE_FILE)
  saved = writers.read_json(state_path, {}).get(str(int(state.step)), {})
  kl_coef = saved.get("kl_coef", config.kl_coef)
  moments = rl.RunningMoments(**saved.get("moments", {}))

  sampler = sampling.cached_sampler(
    policy,
    sampling.SamplingConfig(
      config.max_new_tokens, config.temperature, config.top_k, config.top_p, vocab.eos_id, vocab.pad_id
    ),
  )
  rollout_fn = jax.jit(objective.rollout_targets)
  stops = stop_ids(vocab, config.stop_at_newline)
  prompt_order = data.ArrayDataset({"index": np.arange(len(prompts))}, batch_size, seed)
  writer = MetricsWriter(workdir, tensorboard=tensorboard)
  is_main = jax.process_index() == 0
  samples_path = os.path.join(workdir, "samples.jsonl")
  from tqdm.auto import tqdm

  def shard(batch):  # global numpy rows -> global arrays from this process's rows
    return partitioning.shard_batch(local_rows(batch, len(next(iter(batch.values())))), mesh, rules)

  bar = tqdm(total=num_iterations, initial=start, desc="rl", unit="it", disable=not (progress and is_main))
  try:
    with trainer.PreemptionFlag() as preemption, partitioning.axis_rules(mesh, rules):
      for it in range(start, num_iterations):
        idx = prompt_order.global_batch(it)["index"]
        p_tokens, p_mask = sampling.left_pad([prompt_ids[i] for i in idx], vocab.pad_id, max_prompt_len)
        t0 = time.perf_counter()
        prompt_batch = shard({"tokens": p_tokens, "mask": p_mask})
        out = sampler(
          state.params[rl.POLICY], prompt_batch["tokens"], prompt_batch["mask"], jax.random.fold_in(rng, it)
        )
        tokens, mask, ended = rl.cut_responses(to_host(out.tokens), to_host(out.mask), stops, vocab.pad_id)
        t_sample = time.perf_counter() - t0
        texts = decode_responses(vocab, tokens, mask, stops)
        t0 = time.perf_counter()
        raw = np.asarray(score([prompts[i] for i in idx], texts), np.float32)
        t_score = time.perf_counter() - t0
        shaped = rl.shape_rewards(raw, ended, config, moments)
        rollout = {
          "tokens": np.concatenate([p_tokens, tokens], axis=1),
          "input_mask": np.concatenate([p_mask, mask], axis=1),
          "response_mask": mask,
          "reward": shaped,
        }
        t0 = time.perf_counter()
        targets, rollout_metrics = rollout_fn(state.params, ref_params, shard(rollout), np.float32(kl_coef))
        rollout.update({k: to_host(v) for k, v in targets.items()})
        del rollout["reward"]
        update_metrics = []
        for epoch in range(config.update_epochs):
          order = np.random.default_rng([seed, it, epoch]).permutation(batch_size)
          for rows in np.split(order, config.minibatches):
            mb = {k: v[rows] for k, v in rollout.items()}
            state, metrics = rl_trainer.step(state, local_rows(mb, len(rows)), rng)
            update_metrics.append(metrics)
        update_metrics = jax.device_get(update_metrics)
        t_update = time.perf_counter() - t0
        scalars = {k: float(v) for k, v in jax.device_get(rollout_metrics).items()}
        scalars.update({k: float(np.mean([m[k] for m in update_metrics])) for k in update_metrics[0]})
        lengths = mask.sum(axis=1)
        scalars.update(
          reward_raw_mean=float(raw.mean()),
          reward_raw_std=float(raw.std()),
          reward_mean=float(shaped.mean()),
          reward_std=float(shaped.std()),
          response_length=float(lengths.mean()),
          ended_fraction=float(ended.mean()),
          kl_coef=float(kl_coef),
          sample_tokens_per_sec=float(lengths.sum() / t_sample),
          update_tokens_per_sec=float(rollout["tokens"].size * config.update_epochs / t_update),
          score_seconds=t_score,
        )
        writer.write(it + 1, scalars)
        bar.update(1)
        bar.set_postfix(reward=f"{scalars['reward_raw_mean']:.3f}", kl=f"{scalars['kl']:.3f}")
        logging.info("rl iteration %d: %s", it + 1, ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())))
        if config.target_kl is not None:
          kl_coef = rl.adaptive_kl_coef(kl_coef, scalars["kl"], config.target_kl, config.kl_horizon, batch_size)
        last = it + 1 == num_iterations
        if is_main and ((it + 1) % sample_every == 0 or last or it == start):
          with open(samples_path, "a", encoding="utf-8") as f:
            for j in range(min(num_samples, batch_size)):
              record = {"iteration": it + 1, "prompt": prompts[idx[j]], "response": texts[j]}
              record.update(raw_reward=float(raw[j]), reward=float(shaped[j]), ended=bool(ended[j]))
              f.write(json.dumps(record) + "\n")
        stop = preemption.agreed()
        if (it + 1) % checkpoint_every == 0 or last or stop:
          step = int(state.step)
          checkpointer.save(step, state, force=True)
          if is_main:
            entry = {"kl_coef": kl_coef, "moments": dataclasses.asdict(moments), "iteration": it + 1}
            states = {**writers.read_json(state_path, {}), str(step): entry}
            with open(state_path, "w", encoding="utf-8") as f:
              json.dump(states, f, indent=1)
        if stop:
          checkpointer.wait()
          raise trainer.Preempted(int(state.step))
  finally:
    bar.close()
    writer.close()
    checkpointer.close()

  compiled = {  # programs compiled per jitted function: 1 each when no shape changed
    name: fn._cache_size() if fn is not None else 0
    for name, fn in [
      ("sampler_prefill", sampler._prefill),
      ("sampler_decode", sampler._decode),
      ("rollout_targets", rollout_fn),
      ("update_step", rl_trainer._jitted),
    ]
  }
  records = writers.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
  rewards = [r["reward_raw_mean"] for r in records if "reward_raw_mean" in r]
  summary = {
    "iterations": num_iterations,
    "prompts": len(prompts),
    "prompts_truncated": truncated,
    "reward_first": rewards[0] if rewards else None,
    "reward_last": rewards[-1] if rewards else None,
    "kl_last": next((r["kl"] for r in reversed(records) if "kl" in r), None),
    "kl_coef_final": kl_coef,
    "compilations": compiled,
    "checkpoints": checkpointer.directory,
    "samples_file": samples_path,
  }
  if is_main:
    summary["curves_png"] = plots.plot_curves(records, list(CURVES), os.path.join(workdir, "curves.png"), "RL")
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
  return summary
