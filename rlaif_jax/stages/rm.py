"""The `rm` stage: train a reward model on AI soft labels (distilled RLAIF), human labels
(RLHF), or both; evaluate against each; save reward statistics and a report.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os

import jax
import numpy as np
import optax

from rlaif_jax import data, models, optimizers, partitioning, plots, records, reward, trainer, writers
from rlaif_jax.labeling.report import calibration_bins, length_baselines, pair_lengths
from rlaif_jax.stages.base import stage, write_curves

CURVES = ["loss", "accuracy", "eval/accuracy_human", "eval/accuracy_ai", "margin"]


@stage
def run_rm(
  workdir: str,
  model: models.ModelSource,
  task: str | None = "hh_harmless_pairs",
  train_split: str = "train",
  eval_split: str | None = "test",
  candidates_file: str | None = None,
  label_source: str = "human",
  ai_labels: str | None = None,
  label_smoothing: float = 0.0,
  eval_fraction: float = 0.2,
  ai_eval_fraction: float = 0.0,
  max_len: int = 512,
  batch_size: int = 16,
  num_steps: int = 200,
  optimizer: optax.GradientTransformation | None = None,
  learning_rate=None,
  mesh_shape: dict | None = None,
  rules=partitioning.DEFAULT_RULES,
  seed: int = 0,
  fit: trainer.FitConfig = trainer.FitConfig(),
  lora: models.LoraConfig | None = None,
) -> dict:
  """Trains a reward model; eval pairs come from eval_split, or a seeded eval_fraction of the
  training pairs when eval_split is None. With eval_split and AI labels, ai_eval_fraction holds out
  that seeded fraction of the AI-labeled training pairs too, for the distillation accuracy (accuracy
  vs AI) beside accuracy vs human. Writes report.md/json, curves.png, calibration.png.
  model: where the reward model starts (its decoder; the scalar head is fresh): an SFT
  checkpoint, a pretrained model, or a random init of a config. lora: adapters train on its
  frozen decoder, the head in full (models.lora). fit: the checkpoint, log and evaluation
  cadence (trainer.FitConfig; gin: rm.Fit)."""
  ai = reward.read_ai_labels(ai_labels) if ai_labels else None
  split = (task, train_split, eval_split, candidates_file, eval_fraction, ai_eval_fraction)
  pairs, eval_pairs = reward.train_eval_pairs(*split, ai, seed)
  where = candidates_file or data.source_name(task, train_split)
  rows, labels = reward.labeled_examples(pairs, label_source, ai, "run_rm", where, min_rows=batch_size)
  mesh = partitioning.make_mesh(mesh_shape)
  partitioning.check_batch_fits(batch_size, mesh)
  rm, initial, vocab, adapters_of = _start(model, mesh, rules, seed, lora)
  train_arrays, stats = reward.pair_arrays(rows, labels, vocab, max_len)
  init = functools.partial(models.init_params, rm, boxed=True)
  objective, optimizer = reward.RewardObjective(rm, label_smoothing), optimizer or optimizers.adamw(1e-4)
  frozen = lora and models.lora.frozen_part(initial)
  rm_trainer = trainer.Trainer(objective.loss_fn, init, optimizer, mesh, rules, schedule=learning_rate, frozen=frozen)
  evaluator = functools.partial(
    reward.make_evaluator, rm, mesh, rules, ai=ai, vocab=vocab, max_len=max_len, batch_size=batch_size
  )
  evaluate = evaluator(eval_pairs) if eval_pairs else _no_eval_pairs(eval_split, eval_fraction)
  state = trainer.fit(
    rm_trainer,
    data.ArrayDataset(train_arrays, batch_size, seed).batch,
    num_steps,
    workdir=workdir,
    seed=seed,
    config=fit,
    eval_fn=evaluate,
    initial_params=initial,
    reads=data.encoder.reading(vocab),
    adapters_of=adapters_of,
    donate_initial=True,  # the decoder's arrays become the state's: one copy
  )
  summary = {
    "steps": int(state.step),
    "label_source": label_source,
    "train_pairs": len(rows),
    "eval_pairs": len(eval_pairs),
    "train_pair_ids": len({p["id"] for p in rows}),  # train_pairs counts a mixture's pairs twice
    "train_pairs_digest": _digest(rows),  # the report checks that RLAIF and RLHF RMs saw the same pairs
    "eval_pairs_digest": _digest(eval_pairs),
    **_length_baseline(eval_pairs),
    "truncated_contexts": stats["truncated_inputs"],
    "truncated_responses": stats["truncated_responses"],
  }
  # every process evaluates (the evaluator is a collective on a multi-process mesh); process 0 writes
  summary.update(
    _finish(workdir, evaluate, rm_trainer.full_params(state.params), summary, None if evaluate else evaluator(rows))
  )
  summary.pop("calibration", None)  # in report.json and calibration.png
  return summary


def _no_eval_pairs(eval_split, eval_fraction) -> None:
  """Says loudly that there is nothing to evaluate on (every held-out pair is evaluated, however
  few: the evaluator pads its last batch)."""
  logging.warning(
    "run_rm: no held-out pairs (eval_split=%r, eval_fraction=%s): no held-out accuracy or calibration; "
    "reward_stats.json comes from the training pairs", eval_split, eval_fraction,
  )  # fmt: skip


def _length_baseline(pairs) -> dict:
  """How often the longer (in characters) of two responses is the human-preferred one, on the
  held-out pairs with a human label: the accuracy a length counter gets, for the RM to beat."""
  found = length_baselines(pairs, pair_lengths(pairs))  # it counts the human-labeled ones
  return {f"eval_{k}": v for k, v in found.items()}


def _digest(pairs) -> str:
  """A short fingerprint of a set of pair ids (the pairs, not their labels or order)."""
  ids = "\n".join(sorted({str(p["id"]) for p in pairs}))
  return hashlib.sha256(ids.encode()).hexdigest()[:16]


def _start(model: models.ModelSource, mesh, rules, seed, lora=None):
  """(reward model, initial parameters or None for a random init, vocabulary, the LoRA base's
  record or None): the decoder of the model source's weights (with fresh adapters) and a fresh
  scalar head."""
  if not (model.checkpoint or model.pretrained or lora):
    return models.Transformer(model.config, scalar_head=True), None, model.vocabulary(), None
  lm = model.load(mesh, rules, lora=lora, seed=seed)
  rm = lm.model.clone(scalar_head=True)
  # the decoder's parameters stay in their shardings: on a multi-process mesh no process holds them whole
  return rm, reward.init_from_lm(rm, lm.params, jax.random.PRNGKey(seed)), lm.vocab, lm.adapters_of


def _finish(workdir, evaluate, params, summary, on_train=None) -> dict:
  """Final evaluation, reward statistics, report and plots (without held-out pairs, the reward
  statistics RL normalizes with come from on_train, an evaluator of the training pairs)."""
  out = {}
  if evaluate or on_train:
    full = (evaluate or on_train)(params, full=True)
    out["reward_stats"] = reward.reward_stats(full.pop("_rewards"))
    records.write_json(os.path.join(workdir, reward.STATS_FILE), out["reward_stats"], indent=None)
  if evaluate is not None:
    prob_a, human, ai = full.pop("_prob_a"), full.pop("_human"), full.pop("_ai")
    out.update({f"eval_{k}": v for k, v in full.items()})
    out.update(reward.accuracy_intervals(out))
    target = np.where(np.isnan(ai), (human == 0).astype(float), ai)
    keep = (human >= 0) | ~np.isnan(ai)
    out["calibration"] = calibration_bins(prob_a[keep], target[keep]) if keep.any() else []
    out["calibration_png"] = plots.plot_calibration(
      out["calibration"],
      os.path.join(workdir, "calibration.png"),
      "reward model calibration",
      "RM P(A preferred) = sigmoid(r_A - r_B)",
      "label P(A) (AI soft label, else human)",
    )
  # the decorator's curves, drawn here: report.md lists the plots written
  out["curves_png"] = write_curves(workdir, CURVES, "reward model")
  report = {**summary, **out}
  records.write_json(os.path.join(workdir, "report.json"), report, indent=2)
  lines = writers.metrics_markdown("Reward model", report)
  plots_written = [os.path.basename(out[k]) for k in ("curves_png", "calibration_png") if out.get(k)]
  lines += ["", f"Plots: {', '.join(plots_written) or 'none'}"]
  lines += writers.definitions_markdown(writers.shown_definitions(reward.DEFINITIONS, report))
  records.write_text(os.path.join(workdir, "report.md"), "\n".join(lines) + "\n")
  out["report"] = os.path.join(workdir, "report.md")
  return out
