"""The `rrhf` stage: collect k scored responses per input, train with rank + SFT losses.

Offline (resample_every=0) collects once from the starting policy; online re-collects from
the current policy every `resample_every` steps. Each round ends with a checkpoint, so a
rerun resumes at the round it stopped in and re-collects it exactly (seeded per round).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os

import jax
import optax

from rlaif_jax import data, models, optimizers, partitioning, plots, rrhf, trainer, writers
from rlaif_jax.checkpoints import Checkpointer
from rlaif_jax.labeling.labeler import load_model_params
from rlaif_jax.stages.scorers import build_scorer, load_examples, vocabulary
from rlaif_jax.writers import MetricsWriter


def run_rrhf(
  workdir: str,
  model_config: models.TransformerConfig,
  init_checkpoint: str | None = None,
  task: str = "hh_harmless_pairs",
  split: str = "train",
  limit: int | None = None,
  sources: rrhf.Sources = rrhf.Sources(),
  scorer: str = "rm",
  rm_workdir: str | None = None,
  labeler_checkpoint: str | None = None,
  labeler_task: str = "harmlessness",
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
  scorer_fn=None,
  pretrained: str | None = None,
  labeler_pretrained: str | None = None,
) -> dict:
  """Trains the policy with RRHF; writes metrics.jsonl (with policy_score per round),
  curves.png and summary.json. scorer_fn replaces `scorer` (for Python callers); pretrained
  names the model the policy was fine-tuned from, for its vocabulary."""
  vocab = vocabulary(pretrained)
  mesh = partitioning.make_mesh(mesh_shape)
  partitioning.check_batch_fits(batch_size, mesh)
  examples = load_examples(task, split, limit)
  score = scorer_fn or build_scorer(
    scorer,
    examples,
    model_config,
    rm_workdir,
    labeler_checkpoint,
    labeler_task,
    max_len,
    mesh,
    vocab=vocab,
    labeler_pretrained=labeler_pretrained,
  )
  model = models.Transformer(model_config)
  rrhf_trainer = trainer.Trainer(
    rrhf.RRHFObjective(model, sft_weight).loss_fn,
    functools.partial(models.init_params, model, boxed=True),
    optimizer or optimizers.adamw(1e-4),
    mesh,
    rules,
  )
  others = [load_model_params(model, mesh, c) for c in sources.checkpoints]
  round_len = resample_every or num_steps
  rounds = math.ceil(num_steps / round_len)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  done = Checkpointer(ckpt_dir).latest_step() if os.path.isdir(ckpt_dir) else None
  params = load_model_params(model, mesh, ckpt_dir if done else init_checkpoint, seed)
  writer = MetricsWriter(workdir, tensorboard=tensorboard)
  history = []
  try:
    for r in range((done or 0) // round_len, rounds):
      arrays, info = rrhf.collect(model, params, vocab, examples, sources, score, max_len, seed + 1000 * r, others)
      before = rrhf.ordering(model, params, arrays)
      writer.write(r * round_len, {"policy_score": info["policy_score"] or 0.0, "ordering_before_round": before})
      logging.info("rrhf round %d: sources %s, policy score %s", r, info["sources"], info["policy_score"])
      start, end = r * round_len, min((r + 1) * round_len, num_steps)
      batches = data.ArrayDataset(arrays, batch_size, seed + r)
      state = trainer.fit(
        rrhf_trainer,
        lambda step, b=batches, s=start: b.batch(step - s),
        end,
        workdir=workdir,
        seed=seed,
        checkpoint_every=round_len,
        keep_checkpoints=2,
        log_every=log_every,
        tensorboard=tensorboard,
        initial_params=params if r == 0 else None,
      )
      params = state.params
      after = rrhf.ordering(model, params, arrays)  # the same responses, after training on them
      writer.write(end, {"ordering_after_round": after})
      history.append(
        {"round": r, "policy_score": info["policy_score"], "ordering_before": before, "ordering_after": after}
      )
    if sources.policy_temperatures:  # the final policy's own samples, scored like the rounds'
      final_sources = rrhf.Sources(sources.policy_temperatures, (), False, sources.max_new_tokens)
      _, final = rrhf.collect(model, params, vocab, examples, final_sources, score, max_len, seed + 999_999)
      writer.write(num_steps, {"policy_score": final["policy_score"]})
    else:  # no policy sources (e.g. human ranks only): samples to show, no score
      texts = rrhf.sample_texts(
        model,
        params,
        vocab,
        [ex["inputs"] for ex in examples[:3]],
        1.0,
        sources.max_new_tokens,
        max_len,
        seed + 999_999,
      )
      final = {"policy_score": None, "texts": [texts]}
  finally:
    writer.close()
  summary = {
    "steps": num_steps,
    "rounds": rounds,
    "sources": info["sources"] if history else None,
    "policy_score_first_round": history[0]["policy_score"] if history else None,
    "policy_score_final": final["policy_score"],
    "history": history,
  }
  if jax.process_index() == 0:
    records = writers.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
    summary["curves_png"] = plots.plot_curves(
      records,
      ["loss", "rank_loss", "sft_loss", "ordered_fraction", "policy_score"],
      os.path.join(workdir, "curves.png"),
      "RRHF",
    )
    summary["samples"] = [
      {"prompt": ex["inputs"][-200:], "generated": t} for ex, t in zip(examples[:3], final["texts"][0][:3])
    ]
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump({k: v for k, v in summary.items() if k != "samples"}, f, indent=2)
  return summary
