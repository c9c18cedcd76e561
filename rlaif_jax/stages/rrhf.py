"""The `rrhf` stage: collect k scored responses per input, train with rank + SFT losses.

Offline (resample_every=0) collects once from the starting policy; online re-collects from
the current policy every `resample_every` steps. Each round ends with a checkpoint, so a
rerun resumes at the round it stopped in and re-collects it exactly (seeded per round).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable

import optax

from rlaif_jax import data, models, optimizers, partitioning, rrhf, scorers, trainer, writers
from rlaif_jax.checkpoints import Checkpointer, claim
from rlaif_jax.checks import current_made_with
from rlaif_jax.stages.base import stage

CURVES = ["loss", "rank_loss", "sft_loss", "ordered_fraction", "policy_score"]


@stage(curves=CURVES, title="RRHF")
def run_rrhf(
  workdir: str,
  policy: models.ModelSource,
  scorer: Callable,
  task: str = "hh_harmless_pairs",
  split: str = "train",
  limit: int | None = None,
  sources: rrhf.Sources = rrhf.Sources(),
  max_len: int = 256,
  batch_size: int = 8,
  num_steps: int = 100,
  resample_every: int = 0,
  sft_weight: float = 1.0,
  optimizer: optax.GradientTransformation | None = None,
  mesh_shape: dict | None = None,
  rules=partitioning.DEFAULT_RULES,
  seed: int = 0,
  log_every: int = 10,
  tensorboard: bool = True,
  lora: models.LoraConfig | None = None,
) -> dict:
  """Trains the policy (starting from the policy source) with RRHF; scorer rates the responses
  (a scorers.RewardModelScorer, DirectScorer, HumanScorer or any function). Writes
  metrics.jsonl (with policy_score per round), curves.png and summary.json. lora: adapters
  train on the policy's frozen weights (models.lora)."""
  mesh = partitioning.make_mesh(mesh_shape)
  partitioning.check_batch_fits(batch_size, mesh)
  examples = data.load_examples(task, split, limit)
  score = scorers.prepare(scorer, scorers.ScoringContext(mesh, max_len, policy, examples, "run_rrhf", rules))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  claim(ckpt_dir, current_made_with())  # trained with other settings: moved aside, trained anew
  done = Checkpointer(ckpt_dir).latest_good_step() if os.path.isdir(ckpt_dir) else None
  loaded, params = _start(policy, ckpt_dir, done, lora, mesh, rules, seed)
  model = loaded.model
  others = [policy.replace(checkpoint=c).load(mesh, rules).params for c in sources.checkpoints]
  init = functools.partial(models.init_params, model, boxed=True)
  rrhf_trainer = trainer.Trainer(rrhf.RRHFObjective(model, sft_weight).loss_fn, init,
                                 optimizer or optimizers.adamw(1e-4), mesh, rules, frozen=loaded.frozen)  # fmt: skip
  sample = rrhf.PolicySampler(model, loaded.vocab, sources.max_new_tokens, max_len, batch_size, mesh, sources.stop)
  collect = functools.partial(
    rrhf.collect, model, vocab=loaded.vocab, examples=examples, scorer=score, max_len=max_len, sampler=sample
  )
  round_len = resample_every or num_steps
  writer = writers.MetricsWriter(workdir, tensorboard=tensorboard, resumed_at=done or 0)
  history, info = [], None
  try:
    for r in range((done or 0) // round_len, math.ceil(num_steps / round_len)):
      arrays, info = collect(params, sources=sources, seed=seed + 1000 * r, other_params=others)
      start, end = r * round_len, min((r + 1) * round_len, num_steps)
      before = rrhf.ordering(model, params, arrays, batch_size)
      writer.write(start, {"policy_score": info["policy_score"] or 0.0, "ordering_before_round": before})
      logging.info("rrhf round %d: sources %s, policy score %s", r, info["sources"], info["policy_score"])
      batches = data.ArrayDataset(arrays, batch_size, seed + r)
      state = trainer.fit(
        rrhf_trainer,
        lambda step, b=batches, s=start: b.batch(step - s),
        end,
        workdir=workdir,
        seed=seed,
        config=trainer.FitConfig(round_len, keep_checkpoints=2, log_every=log_every, tensorboard=tensorboard),
        initial_params=params if r == 0 else None,
        reads=data.encoder.reading(loaded.vocab),
        adapters_of=loaded.adapters_of,
      )
      params = rrhf_trainer.full_params(state.params)
      after = rrhf.ordering(model, params, arrays, batch_size)  # the same responses, after training on them
      writer.write(end, {"ordering_after_round": after})
      history.append({"round": r, "policy_score": info["policy_score"], "ordering_before": before})
      history[-1]["ordering_after"] = after
    final = _final_samples(collect, sample, params, sources, examples, seed, writer, num_steps)
  finally:
    writer.close()
  return _summary(workdir, num_steps, round_len, info, history, final, examples, scorers.source_of(scorer, policy))


def _start(policy: models.ModelSource, ckpt_dir: str, done: int | None, lora, mesh, rules, seed: int):
  """(the policy as loaded, the parameters to sample with): the source's, or a resumed run's last
  round's (its checkpoint; with LoRA its adapters beside the source's frozen weights)."""
  if lora is None:
    loaded = (policy.replace(checkpoint=ckpt_dir, step=done) if done else policy).load(mesh, rules)
    return loaded, loaded.params
  loaded = policy.load(mesh, rules, lora=lora, seed=seed)
  return loaded, loaded.with_trained(ckpt_dir, mesh, rules, done) if done else loaded.params


def _final_samples(collect, sample, params, sources, examples, seed, writer, num_steps) -> dict:
  """The final policy's own samples, scored like the rounds'; with no policy sources (e.g.
  human ranks only) a few samples to show, unscored."""
  if sources.policy_temperatures:
    final_sources = rrhf.Sources(sources.policy_temperatures, (), False, sources.max_new_tokens)
    _, final = collect(params, sources=final_sources, seed=seed + 999_999)
    writer.write(num_steps, {"policy_score": final["policy_score"]})
    return final
  texts = sample(params, [ex["inputs"] for ex in examples[:3]], 1.0, seed + 999_999)
  return {"policy_score": None, "texts": [texts]}


def _summary(workdir, num_steps, round_len, info, history, final, examples, reward_source) -> dict:
  summary = {
    "steps": num_steps,
    "reward_source": reward_source,  # compared with the judge's weights by the report
    "rounds": math.ceil(num_steps / round_len),
    "sources": info["sources"] if history else None,
    "policy_score_first_round": history[0]["policy_score"] if history else None,
    "policy_score_final": final["policy_score"],
    "history": history,
  }
  if partitioning.is_main_process():
    summary["samples"] = [
      {"prompt": ex["inputs"][-200:], "generated": t} for ex, t in zip(examples[:3], final["texts"][0][:3])
    ]
  return summary
