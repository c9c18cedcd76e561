"""The rollout loop every RL estimator shares.

One iteration: take batch_size prompts, sample `estimator.samples_per_prompt` responses to each
with the KV-cache sampler (a `Generator`), cut them at their stop rule, score them (any scorer),
shape the rewards, run the estimator's jitted `targets` pass (log-probs, values, returns,
advantages) once, then `update_epochs` x `minibatches` trainer steps on the estimator's
`loss_fn`. Every function on device is compiled once: shapes are fixed by the batch size,
max_prompt_len and max_new_tokens.

An estimator is an rl.Estimator (estimator.py: samples_per_prompt, init_params, initial_params,
optimizer, targets, jitted once per run, and loss_fn, the trainer's loss), where
params["policy"] is the sampled policy. REINFORCE with a value baseline (reinforce.py)
is the paper's.

Checkpoints hold the whole train state; the KL coefficient and the running reward moments are
saved beside them (rl_state.json), so a rerun resumes exactly where it stopped. With
LoopSettings.record_rollouts, every iteration appends one line per prompt to rollouts.jsonl:
its K responses, their raw scores and what the scorer said of them (a scorer may keep
`last_details`, one dict per prompt, e.g. the pairwise labeler's both-order probabilities);
a resumed run rewinds it to its checkpoint, so each iteration appears once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from rlaif_jax import data, partitioning, records, sampling, trainer, writers
from rlaif_jax.checkpoints import Checkpointer, claim, record_adapters, record_reading
from rlaif_jax.checks import current_made_with
from rlaif_jax.compilation import CountedJit
from rlaif_jax.generation import Generator, StopRule
from rlaif_jax.rl.estimator import Estimator
from rlaif_jax.rl.reinforce import POLICY, RLConfig, RunningMoments, adaptive_kl_coef, shape_rewards

STATE_FILE = "rl_state.json"


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  batch_size: int = 16  # prompts per iteration
  num_iterations: int = 100
  max_prompt_len: int = 448
  checkpoint_every: int = 10
  keep_checkpoints: int = 2
  sample_every: int = 10  # iterations between samples.jsonl entries
  num_samples: int = 4
  record_rollouts: bool = False  # every response and its raw score, each iteration, in rollouts.jsonl
  seed: int = 0
  progress: bool = True
  tensorboard: bool = True


def rollout_generator(
  model, vocab, sampling_config: sampling.SamplingConfig, rows: int, max_prompt_len: int, mesh, rules, stop=StopRule()
) -> Generator:
  """The sampler of rollouts: rows responses per batch as sampling_config says (temperature,
  top-k, top-p, length cap), ended by the task's stop rule (EOS always; the first newline of a
  TL;DR summary, the next "\n\nHuman:" of a dialogue); texts are not stripped: the scorer reads
  them as sampled."""
  stop = dataclasses.replace(stop, strip=False)
  return Generator(
    model, vocab, sampling_config, batch_size=rows, max_prompt_len=max_prompt_len, stop=stop, mesh=mesh, rules=rules
  )


class RolloutLoop:
  """Runs an estimator against a scorer; `run(prompts, ref_params)` -> the final train state."""

  def __init__(
    self,
    estimator: Estimator,
    rl_trainer: trainer.Trainer,
    generator: Generator,
    scorer: Callable[[Sequence[str], Sequence[str]], np.ndarray],
    config: RLConfig,
    settings: LoopSettings,
    workdir: str,
  ):
    self.estimator, self.trainer, self.generator, self.scorer = estimator, rl_trainer, generator, scorer
    self.config, self.settings, self.workdir = config, settings, workdir
    self.mesh, self.rules = rl_trainer.mesh, rl_trainer.rules
    self.targets_fn = CountedJit(estimator.targets)
    self.state_path = os.path.join(workdir, STATE_FILE)
    if claim(os.path.join(workdir, "checkpoints"), current_made_with()):  # other settings: trained anew
      if partitioning.is_main_process() and os.path.exists(self.state_path):
        os.replace(self.state_path, self.state_path + ".stale")  # the old steps' KL coefficients and moments
      if jax.process_count() > 1:
        partitioning.agree(True)  # no process reads the old state after this
    self.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), 1, settings.keep_checkpoints)
    self.samples_path = os.path.join(workdir, "samples.jsonl")
    self.rollouts_path = os.path.join(workdir, "rollouts.jsonl")
    self.rng = jax.random.PRNGKey(settings.seed)
    self.kl_coef, self.moments = config.kl_coef, RunningMoments()
    self.prompts_truncated = 0

  @property
  def updates_per_iteration(self) -> int:
    return self.config.update_epochs * self.config.minibatches

  def restore(self, ref_params):
    """The latest checkpoint's state and its KL coefficient and reward moments, else a fresh
    state from the reference parameters; returns (state, first iteration to run)."""
    initial = None
    if self.checkpointer.latest_step() is None:  # init_state copies these, so donating the state spares ref_params
      initial = self.estimator.initial_params(ref_params, jax.random.fold_in(self.rng, 1))
    state = self.trainer.restore_or_init(self.rng, self.checkpointer, initial)
    step = int(state.step)
    saved = self._saved_state(step)
    self.kl_coef = saved.get("kl_coef", self.config.kl_coef)
    self.moments = RunningMoments(**saved.get("moments", {}))
    return state, step // self.updates_per_iteration

  def _saved_state(self, step: int) -> dict:
    """rl_state.json's entry for a restored step ({} for a fresh start). A resumed step without one
    is a CheckpointError where its KL coefficient or reward moments matter (an adaptive KL, running
    normalization): they would silently restart from their initial values."""
    from rlaif_jax.checkpoints import CheckpointError

    state = records.read_json(self.state_path, {})
    entry = state.get(str(step)) if isinstance(state, dict) else None
    if not isinstance(state, dict) or (entry is not None and not isinstance(entry, dict)):
      raise CheckpointError(f"{self.state_path} does not hold {{step: {{kl_coef, moments}}}}: restore it, or move "
                            f"{self.workdir} away to train anew")  # fmt: skip
    if step and entry is None:
      matters = self.config.target_kl is not None or self.config.reward_normalization == "running"
      where = f"{self.state_path} has no entry for step {step} (deleted?)"
      if matters:
        raise CheckpointError(f"{where}: its adaptive KL coefficient and reward moments are lost; restore the file, "
                              f"or move {self.workdir} away to train anew")  # fmt: skip
      logging.warning("%s: the KL coefficient and reward moments restart from their settings", where)
    return entry or {}

  def rollout(self, state, ref_params, prompts, prompt_ids, idx, it) -> tuple[dict, dict, list]:
    """Samples, scores and targets for the prompts idx: (rollout arrays, metrics, shown samples),
    and with record_rollouts every response and its score appended to rollouts.jsonl."""
    k = self.estimator.samples_per_prompt
    rows = np.repeat(np.asarray(idx), k)
    t0 = time.perf_counter()
    p_tokens, p_mask = self.generator.pad_prompts([prompt_ids[i] for i in rows])
    key = jax.random.fold_in(self.rng, it)
    params = self.trainer.full_params(state.params)  # with a LoRA base beside the trained adapters
    out = self.generator.sample_arrays(params[POLICY], p_tokens, p_mask, key, repeats=k)  # a prefill per prompt
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = np.asarray(self.scorer([prompts[i] for i in rows], out.texts), np.float32)
    t_score = time.perf_counter() - t0
    shaped = shape_rewards(raw, out.ended, self.config, self.moments)
    rollout = {
      "tokens": np.concatenate([p_tokens, out.tokens], axis=1),
      "input_mask": np.concatenate([p_mask, out.mask], axis=1),
      "response_mask": out.mask,
      "reward": shaped,
    }
    batch = partitioning.put_batch(rollout, self.mesh, self.rules)
    with partitioning.axis_rules(self.mesh, self.rules):
      targets, metrics = self.targets_fn(params, ref_params, batch, np.float32(self.kl_coef))
    rollout.update({name: partitioning.to_host(v) for name, v in targets.items()})
    del rollout["reward"]
    lengths = out.mask.sum(axis=1)
    metrics = {name: float(v) for name, v in jax.device_get(metrics).items()}
    metrics.update(
      reward_raw_mean=float(raw.mean()),
      reward_raw_std=float(raw.std()),
      reward_mean=float(shaped.mean()),
      reward_std=float(shaped.std()),
      response_length=float(lengths.mean()),
      ended_fraction=float(out.ended.mean()),
      kl_coef=float(self.kl_coef),
      sample_tokens_per_sec=float(lengths.sum() / t_sample),
      score_seconds=t_score,
    )
    shown = [
      {"prompt": prompts[rows[j]], "response": out.texts[j], "raw_reward": float(raw[j])}
      | {"reward": float(shaped[j]), "ended": bool(out.ended[j])}
      for j in range(min(self.settings.num_samples, len(rows)))
    ]
    if self.settings.record_rollouts:
      self.record(it, idx, prompts, out.texts, raw, k)
    return rollout, metrics, shown

  def record(self, it: int, idx, prompts, texts, raw, k: int) -> None:
    """One line per prompt: its K responses, their raw scores and the scorer's details."""
    details = getattr(self.scorer, "last_details", None) or [{}] * len(idx)
    lines = [
      {"iteration": it + 1, "prompt": prompts[i], "responses": list(texts[g * k : (g + 1) * k])}
      | {"raw_rewards": [float(x) for x in raw[g * k : (g + 1) * k]], **details[g]}
      for g, i in enumerate(idx)
    ]
    records.append_jsonl(self.rollouts_path, lines)

  def update(self, state, rollout: dict, it: int):
    """update_epochs passes of `minibatches` trainer steps over the rollout's rows, shuffled; an
    estimator whose loss reads a prompt's K responses together (minibatch_by_prompt, e.g. OAIF's
    pairs) gets whole prompts in each minibatch."""
    k = self.estimator.samples_per_prompt if self.estimator.minibatch_by_prompt else 1
    groups = len(rollout["tokens"]) // k
    metrics = []
    for epoch in range(self.config.update_epochs):
      order = np.random.default_rng([self.settings.seed, it, epoch]).permutation(groups)
      for chosen in np.split(order, self.config.minibatches):
        rows = (chosen[:, None] * k + np.arange(k)[None, :]).reshape(-1)
        mb = {name: v[rows] for name, v in rollout.items()}
        state, m = self.trainer.step(state, partitioning.local_rows(mb, len(rows)), self.rng)
        metrics.append(m)
    metrics = jax.device_get(metrics)
    return state, {name: float(np.mean([m[name] for m in metrics])) for name in metrics[0]}

  def save(self, state, iteration: int) -> None:
    step = int(state.step)
    self.checkpointer.save(step, state, force=True)
    entry = {"kl_coef": self.kl_coef, "moments": dataclasses.asdict(self.moments), "iteration": iteration}
    records.write_json(self.state_path, {**records.read_json(self.state_path, {}), str(step): entry})

  def run(self, prompts: Sequence[str], ref_params, adapters_of: dict | None = None):
    """Trains from the latest checkpoint (or the reference) to settings.num_iterations. With LoRA,
    adapters_of (models.LoadedModel's) is recorded beside the checkpoints, which hold adapters."""
    from tqdm.auto import tqdm

    s = self.settings
    record_reading(self.checkpointer.directory, data.encoder.reading(self.generator.vocab))
    record_adapters(self.checkpointer.directory, adapters_of)
    prompt_ids = [data.encoder.context(self.generator.vocab, p) for p in prompts]
    self.prompts_truncated = sum(len(p.ids) > s.max_prompt_len for p in prompt_ids)  # cut after the head when sampled
    prompt_order = data.ArrayDataset({"index": np.arange(len(prompts))}, s.batch_size, s.seed)
    state, start = self.restore(ref_params)
    writer = writers.MetricsWriter(self.workdir, tensorboard=s.tensorboard, resumed_at=start)
    for path in (self.samples_path, self.rollouts_path):  # iterations after the checkpoint are sampled again
      records.keep_until(path, "iteration", start)
    is_main = partitioning.is_main_process()
    bar = tqdm(total=s.num_iterations, initial=start, desc="rl", unit="it", disable=not (s.progress and is_main))
    try:
      with trainer.PreemptionFlag() as preemption:
        for it in range(start, s.num_iterations):
          idx = prompt_order.global_batch(it)["index"]
          rollout, scalars, shown = self.rollout(state, ref_params, prompts, prompt_ids, idx, it)
          t0 = time.perf_counter()
          state, update_metrics = self.update(state, rollout, it)
          scalars.update(update_metrics)
          scalars["update_tokens_per_sec"] = float(
            rollout["tokens"].size * self.config.update_epochs / (time.perf_counter() - t0)
          )
          self.log(writer, bar, it, scalars)
          last = it + 1 == s.num_iterations
          if (it + 1) % s.sample_every == 0 or last or it == start:
            records.append_jsonl(self.samples_path, [{"iteration": it + 1, **x} for x in shown])
          stop = preemption.agreed()
          if (it + 1) % s.checkpoint_every == 0 or last or stop:
            self.save(state, it + 1)
          if stop:
            self.checkpointer.wait()
            raise trainer.Preempted(int(state.step))
    finally:
      bar.close()
      writer.close()
      self.checkpointer.close()
    return state

  def log(self, writer, bar, it: int, scalars: dict) -> None:
    writer.write(it + 1, scalars)
    bar.update(1)
    bar.set_postfix({k: f"{scalars[k]:.3f}" for k in ("reward_raw_mean", "kl") if k in scalars})
    logging.info("rl iteration %d: %s", it + 1, ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())))
    if self.config.target_kl is not None:
      if "kl" not in scalars:
        raise ValueError("RLConfig.target_kl needs an estimator whose targets report the sequence KL ('kl')")
      n = self.settings.batch_size * self.estimator.samples_per_prompt  # samples this iteration
      self.kl_coef = adaptive_kl_coef(self.kl_coef, scalars["kl"], self.config.target_kl, self.config.kl_horizon, n)

  def compilations(self) -> dict[str, int]:
    """Programs compiled per jitted function: 1 each when no shape changed."""
    traces = self.generator.sampler.traces
    return {
      "sampler_prefill": traces["prefill"],
      "sampler_decode": traces["decode"],
      "rollout_targets": self.targets_fn.traces,
      "update_step": self.trainer.traces,
    }
