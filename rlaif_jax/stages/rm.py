"""The `rm` stage: train a reward model on AI soft labels (distilled RLAIF), human labels
(RLHF), or both; evaluate against each; save reward statistics and a report.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import optax

from rlaif_jax import data, models, optimizers, partitioning, plots, reward, trainer, writers
from rlaif_jax.labeling.labeler import load_model_params
from rlaif_jax.labeling.report import calibration_bins
from rlaif_jax.stages.label import load_pairs
from rlaif_jax.stages.scorers import vocabulary

LABEL_SOURCES = ("human", "ai", "mixture")


def read_ai_labels(path: str) -> dict[str, float]:
  """id -> p_a from a labels.jsonl written by the label stage; bad values name file and line."""

  def parse(obj, where):
    p = obj.get("p_a")
    if p is None and obj.get("error"):
      return None  # a pair the labeler could not show; not a label
    if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p) or not 0.0 <= p <= 1.0:
      raise data.FieldError("p_a", f"expected a probability in [0, 1], got {p!r}")
    if "id" not in obj:
      raise data.FieldError("id", "missing")
    return {"id": str(obj["id"]), "p_a": float(p)}

  records, _ = data.read_records(path, parse)
  return {r["id"]: r["p_a"] for r in records}


def labeled_examples(pairs, source: str, ai: dict[str, float] | None) -> tuple[list[dict], list[float]]:
  """The pairs with their training label p_a (duplicated per source for a mixture)."""
  if source not in LABEL_SOURCES:
    raise ValueError(f"run_rm.label_source={source!r}; sources: {LABEL_SOURCES}")
  if source in ("ai", "mixture") and ai is None:
    raise ValueError(f"run_rm.label_source={source!r} needs run_rm.ai_labels (a labels.jsonl)")
  rows, labels = [], []
  for p in pairs:
    if source in ("human", "mixture") and p["human_choice"] in (0, 1):
      rows.append(p)
      labels.append(1.0 - p["human_choice"])
    if source in ("ai", "mixture") and p["id"] in ai:
      rows.append(p)
      labels.append(ai[p["id"]])
  if not rows:
    raise ValueError(f"no pair has a {source} label")
  return rows, labels


def pair_arrays(pairs, labels, vocab, max_len):
  examples = [
    {
      "inputs": np.asarray(vocab.encode(p["inputs"]), np.int32),
      "response_a": np.asarray(list(vocab.encode(p["response_a"])) + [vocab.eos_id], np.int32),
      "response_b": np.asarray(list(vocab.encode(p["response_b"])) + [vocab.eos_id], np.int32),
      "human_choice": p["human_choice"],
    }
    for p in pairs
  ]
  arrays, stats = data.pair_features(examples, max_len, vocab.pad_id)
  arrays["p_a"] = np.asarray(labels, np.float32)
  return arrays, stats


def make_evaluator(model, mesh, rules, pairs, ai, vocab, max_len, batch_size):
  """params -> accuracy vs human labels and vs AI labels (where known), loss, calibration."""
  arrays, _ = pair_arrays(pairs, [0.5] * len(pairs), vocab, max_len)
  human = np.asarray([p["human_choice"] for p in pairs])
  ai_p = np.asarray([ai.get(p["id"], np.nan) if ai else np.nan for p in pairs])
  fn = jax.jit(lambda params, t, m: reward.pair_rewards(model, params, t, m))
  n = len(pairs)
  padded = -(-n // batch_size) * batch_size  # every pair is scored; the last batch is padded
  for key in ("tokens", "input_mask"):
    arrays[key] = np.concatenate([arrays[key], np.zeros((padded - n,) + arrays[key].shape[1:], arrays[key].dtype)])
  sharding = partitioning.batch_sharding(mesh, 3, rules)

  def evaluate(params, full: bool = False) -> dict:
    rewards = []
    with partitioning.axis_rules(mesh, rules):
      for s in range(0, padded, batch_size):
        t, m = (jax.device_put(arrays[k][s : s + batch_size], sharding) for k in ("tokens", "input_mask"))
        rewards.append(np.asarray(fn(params, t, m)))
    r = np.concatenate(rewards)[:n]
    prob_a = 1 / (1 + np.exp(-(r[:, 0] - r[:, 1])))
    out = {}
    known = human[:n] >= 0
    if known.any():
      out["accuracy_human"] = float(np.mean((prob_a[known] > 0.5) == (human[:n][known] == 0)))
      y = (human[:n][known] == 0).astype(float)
      out["loss_human"] = float(
        -np.mean(y * np.log(prob_a[known] + 1e-12) + (1 - y) * np.log(1 - prob_a[known] + 1e-12))
      )
    has_ai = ~np.isnan(ai_p[:n])
    if has_ai.any():
      out["accuracy_ai"] = float(np.mean((prob_a[has_ai] > 0.5) == (ai_p[:n][has_ai] > 0.5)))
      out["mean_abs_error_ai"] = float(np.mean(np.abs(prob_a[has_ai] - ai_p[:n][has_ai])))
    if full:
      out["_rewards"], out["_prob_a"], out["_human"], out["_ai"] = r, prob_a, human[:n], ai_p[:n]
    return out

  return evaluate


def run_rm(
  workdir: str,
  model_config: models.TransformerConfig,
  init_checkpoint: str | None = None,
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
  checkpoint_every: int = 100,
  keep_checkpoints: int = 3,
  log_every: int = 10,
  eval_every: int = 50,
  tensorboard: bool = True,
  pretrained: str | None = None,
) -> dict:
  """Trains a reward model; eval pairs come from eval_split, or a seeded eval_fraction of the
  training pairs when eval_split is None. With eval_split and AI labels, ai_eval_fraction holds out
  that seeded fraction of the AI-labeled training pairs too, for the distillation accuracy (accuracy
  vs AI) beside accuracy vs human. Writes report.md/json, curves.png, calibration.png.
  pretrained names the model init_checkpoint was fine-tuned from, for its vocabulary."""
  vocab = vocabulary(pretrained)
  ai = read_ai_labels(ai_labels) if ai_labels else None
  pairs = load_pairs(task, train_split, candidates_file)
  if eval_split:
    eval_pairs = load_pairs(task, eval_split, None)
    if ai_eval_fraction > 0:
      if ai is None:
        raise ValueError("run_rm.ai_eval_fraction > 0 needs run_rm.ai_labels")
      pairs, held = _split(pairs, ai_eval_fraction, seed)
      eval_pairs = eval_pairs + held
  else:
    pairs, eval_pairs = _split(pairs, eval_fraction, seed)
  rows, labels = labeled_examples(pairs, label_source, ai)
  train_arrays, stats = pair_arrays(rows, labels, vocab, max_len)
  mesh = partitioning.make_mesh(mesh_shape)
  partitioning.check_batch_fits(batch_size, mesh)

  model = models.Transformer(model_config, scalar_head=True)
  objective = reward.RewardObjective(model, label_smoothing)
  rm_trainer = trainer.Trainer(
    objective.loss_fn,
    lambda r: models.init_params(model, r, boxed=True),
    optimizer or optimizers.adamw(1e-4),
    mesh,
    rules,
    schedule=learning_rate,
  )
  initial = None
  if init_checkpoint:
    lm = models.Transformer(model_config)
    lm_params = load_model_params(lm, mesh, init_checkpoint)
    initial = reward.init_from_lm(model, jax.device_get(lm_params), jax.random.PRNGKey(seed))
  evaluate = None
  if len(eval_pairs) >= batch_size:
    evaluate = make_evaluator(model, mesh, rules, eval_pairs, ai, vocab, max_len, batch_size)
  state = trainer.fit(
    rm_trainer,
    data.ArrayDataset(train_arrays, batch_size, seed).batch,
    num_steps,
    workdir=workdir,
    seed=seed,
    checkpoint_every=checkpoint_every,
    keep_checkpoints=keep_checkpoints,
    log_every=log_every,
    eval_fn=evaluate,
    eval_every=eval_every,
    tensorboard=tensorboard,
    initial_params=initial,
  )
  summary = {
    "steps": int(state.step),
    "label_source": label_source,
    "train_pairs": len(rows),
    "eval_pairs": len(eval_pairs),
    "truncated_contexts": stats["truncated_inputs"],
    "truncated_responses": stats["truncated_responses"],
  }
  if jax.process_index() == 0:
    summary.update(_finish(workdir, evaluate, state.params, summary))
    summary.pop("calibration", None)  # in report.json and calibration.png
  return summary


def _split(pairs, fraction, seed):
  perm = np.random.default_rng(seed).permutation(len(pairs))
  n_eval = int(round(len(pairs) * fraction))
  return [pairs[i] for i in perm[n_eval:]], [pairs[i] for i in perm[:n_eval]]


def _finish(workdir, evaluate, params, summary) -> dict:
  """Final evaluation, reward statistics, report and plots."""
  out = {}
  if evaluate is not None:
    full = evaluate(params, full=True)
    stats = reward.reward_stats(full.pop("_rewards"))
    prob_a, human, ai = full.pop("_prob_a"), full.pop("_human"), full.pop("_ai")
    out.update({f"eval_{k}": v for k, v in full.items()})
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
    with open(os.path.join(workdir, reward.STATS_FILE), "w", encoding="utf-8") as f:
      json.dump(stats, f)
    out["reward_stats"] = stats
  records = writers.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
  out["curves_png"] = plots.plot_curves(
    records,
    ["loss", "accuracy", "eval/accuracy_human", "eval/accuracy_ai", "margin"],
    os.path.join(workdir, "curves.png"),
    "reward model",
  )
  report = {**summary, **out}
  with open(os.path.join(workdir, "report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  lines = writers.metrics_markdown("Reward model", report)
  with open(os.path.join(workdir, "report.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n\nPlots: curves.png, calibration.png\n")
  out["report"] = os.path.join(workdir, "report.md")
  return out
