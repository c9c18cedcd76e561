"""Reward-model data and evaluation: labeled pairs from AI soft labels, human labels or both,
their arrays, and an evaluator of accuracy against each label source."""

from __future__ import annotations

import functools
import logging
import math

import jax
import numpy as np

from rlaif_jax import batched, data
from rlaif_jax.evaluation.stats import wilson_interval
from rlaif_jax.reward.model import pair_rewards

LABEL_SOURCES = ("human", "ai", "mixture")
DEFINITIONS = {  # of the evaluator's numbers, as the rm stage's report names them
  "eval_accuracy_human": "accuracy vs human (`eval_accuracy_human`): share of the held-out pairs with a human "
  "choice (`eval_pairs_human`) where the reward model's choice (A when P_RM(A) = sigmoid(r_A - r_B) > 0.5, else B) "
  "is the human's",
  "eval_accuracy_ai": "accuracy vs AI (`eval_accuracy_ai`, distillation accuracy): share of the held-out pairs with "
  "an AI soft label p_a (`eval_pairs_ai`) where the reward model's choice is the label's (A when p_a > 0.5, else B), "
  "i.e. accuracy against the soft labels rounded",
  "eval_mean_abs_error_ai": "mean absolute error vs AI (`eval_mean_abs_error_ai`): the mean of |P_RM(A) - p_a| "
  "over those pairs",
  "eval_loss_human": "log loss (`eval_loss_human`): the mean of -log P_RM(human's choice) over the held-out pairs "
  "with a human choice",
  "eval_baseline_prefer_longer": "prefer-longer / prefer-shorter baseline (`eval_baseline_prefer_longer`, "
  "`eval_baseline_prefer_shorter`): the accuracy vs human of always choosing the longer / shorter response (in "
  "characters), over the held-out pairs with a human choice whose responses differ in length (`eval_baseline_pairs`)",
  "calibration": "calibration: pairs binned by P_RM(A); predicted is the bin's mean, observed the mean label (the AI "
  "soft label where there is one, else 1 when humans chose A)",
  "interval": "[low, high]: the 95% Wilson score interval of a share",
}


class AiLabels(dict):
  """id -> p_a read from a labels file, with each label's content digest (data.pair_digest of the
  pair it was made for; None where the file has none, e.g. labels written by another tool)."""

  def __init__(self, path: str, labels: dict[str, float], content: dict[str, str | None]):
    super().__init__(labels)
    self.path, self.content = path, content

  def for_pairs(self, pairs, where: str = "the pairs", strict: bool = True) -> dict[str, float]:
    """id -> p_a for the pairs that have a label. A label made for other texts than its pair's
    (another file's pair with the same id, or a pair edited since) is a ValueError naming both
    files (not strict: left out); labels without a digest are joined by id, with a warning."""
    found, other, unchecked = {}, [], 0
    for p in pairs:
      if p["id"] not in self:
        continue
      made_for = self.content.get(p["id"])
      if made_for is not None and made_for != data.pair_digest(p):
        other.append(p["id"])
        continue
      unchecked += made_for is None
      found[p["id"]] = self[p["id"]]
    if other and not strict:
      logging.warning("%s: %d labels were made for other texts than %s with their ids (first: %r); left out", self.path,
                      len(other), where, other[0])  # fmt: skip
    if other and strict:
      raise ValueError(
        f"{self.path}: {len(other)} of its labels were made for other texts than the pairs with their ids in "
        f"{where} (first: {other[0]!r}): they label another file's pairs, or the pairs were edited since; label "
        "these pairs (the label stage on the same pairs) and give that labels.jsonl"
      )
    if unchecked:
      logging.warning("%s: %d labels carry no digest of their pair (not written by the label stage): joined to %s by "
                      "id alone", self.path, unchecked, where)  # fmt: skip
    return found


def read_ai_labels(path: str) -> AiLabels:
  """id -> p_a from a labels.jsonl written by the label stage; bad values name file and line."""

  def parse(obj, where):
    p = obj.get("p_a")
    if p is None and obj.get("error"):
      return None  # a pair the labeler could not show; not a label
    if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p) or not 0.0 <= p <= 1.0:
      raise data.FieldError("p_a", f"expected a probability in [0, 1], got {p!r}")
    if "id" not in obj:
      raise data.FieldError("id", "missing")
    return {"id": str(obj["id"]), "p_a": float(p), "content": obj.get("content")}

  records, _ = data.read_records(path, parse, unique_ids=True)
  return AiLabels(path, {r["id"]: r["p_a"] for r in records}, {r["id"]: r["content"] for r in records})


def labeled_examples(
  pairs, source: str, ai: AiLabels | None, stage: str = "run_rm", where: str = "the pairs", min_rows: int = 1
) -> tuple[list[dict], list[float]]:
  """The pairs with their training label p_a (duplicated per source for a mixture); errors name
  the stage's settings. AI labels are joined by id where they were made for the pair's texts
  (AiLabels.for_pairs; `where` names the pairs' file or task); how many pairs have one is logged,
  and fewer labeled pairs than min_rows (a batch) is an error."""
  if source not in LABEL_SOURCES:
    raise ValueError(f"{stage}.label_source={source!r}; sources: {LABEL_SOURCES}")
  if source in ("ai", "mixture") and ai is None:
    raise ValueError(f"{stage}.label_source={source!r} needs {stage}.ai_labels (a labels.jsonl)")
  if source in ("ai", "mixture"):
    ai = ai.for_pairs(pairs, where) if isinstance(ai, AiLabels) else ai
    logging.info("%s: %d of the %d pairs of %s have an AI label", stage, len(ai), len(pairs), where)
  rows, labels = [], []
  for p in pairs:
    if source in ("human", "mixture") and p["human_choice"] in (0, 1):
      rows.append(p)
      labels.append(1.0 - p["human_choice"])
    if source in ("ai", "mixture") and p["id"] in ai:
      rows.append(p)
      labels.append(ai[p["id"]])
  if len(rows) < min_rows:
    raise ValueError(
      f"{stage}: {len(rows)} of the {len(pairs)} pairs of {where} have a {source} label, fewer than a batch "
      f"({min_rows}); label more of them (or give {stage}.ai_labels the labels of these pairs)"
    )
  return rows, labels


def pair_arrays(pairs, labels, vocab, max_len):
  """tokens/input_mask [N, 2, L], p_a [N] (responses end in EOS) and truncation statistics."""
  examples = [
    {
      **data.encoder.example(vocab, p["inputs"], response_a=p["response_a"], response_b=p["response_b"]),
      "human_choice": p["human_choice"],
    }
    for p in pairs
  ]
  arrays, stats = data.pair_features(examples, max_len, vocab.pad_id)
  arrays["p_a"] = np.asarray(labels, np.float32)
  return arrays, stats


def split_pairs(pairs, fraction, seed):
  """(kept, held out): a seeded fraction of the pairs held out."""
  perm = np.random.default_rng(seed).permutation(len(pairs))
  n_eval = int(round(len(pairs) * fraction))
  return [pairs[i] for i in perm[n_eval:]], [pairs[i] for i in perm[:n_eval]]


def accuracy_intervals(out: dict) -> dict:
  """Wilson intervals of held-out accuracies vs human and vs AI labels, as
  eval_accuracy_<kind>_interval: shares of eval_pairs_<kind> pairs; `out` with them added."""
  found = dict(out)
  for kind in ("human", "ai"):
    accuracy, n = out.get(f"eval_accuracy_{kind}"), out.get(f"eval_pairs_{kind}")
    if accuracy is not None and n:
      found[f"eval_accuracy_{kind}_interval"] = list(wilson_interval(round(accuracy * n), n))
  return found


def train_eval_pairs(
  task, train_split, eval_split, candidates_file, eval_fraction, ai_eval_fraction, ai, seed, stage: str = "run_rm"
):
  """(training pairs, evaluation pairs) of a stage that learns from labeled pairs: eval_split's
  pairs (plus a seeded ai_eval_fraction of the AI-labeled training pairs), or a seeded
  eval_fraction of the training pairs when eval_split is None. Errors name the stage's settings."""
  if not (task or candidates_file):
    raise ValueError(f"{stage} needs {stage}.task (a pair task) or {stage}.candidates_file (a pairs file)")
  if eval_split and not task:
    raise ValueError(
      f"{stage}.eval_split={eval_split!r} names a split of {stage}.task, which is None: set {stage}.task, or "
      f"{stage}.eval_split=None to hold out {stage}.eval_fraction of the candidates_file's pairs"
    )
  if eval_split and data.is_file(task) and data.file_for(task, eval_split) == data.file_for(task, train_split):
    raise ValueError(
      f"{stage}.task={task!r} is one file for both splits, so {stage}.eval_split={eval_split!r} would evaluate on "
      f"the training pairs: set {stage}.eval_split=None to hold out {stage}.eval_fraction of them, or name "
      "per-split files with {split} in the path"
    )
  pairs = data.load_pairs(task, train_split, candidates_file)
  if not eval_split:
    return split_pairs(pairs, eval_fraction, seed)
  eval_pairs = data.load_pairs(task, eval_split, None)
  if ai_eval_fraction > 0:
    if ai is None:
      raise ValueError(f"{stage}.ai_eval_fraction > 0 needs {stage}.ai_labels")
    pairs, held = split_pairs(pairs, ai_eval_fraction, seed)
    eval_pairs = eval_pairs + held
  return pairs, eval_pairs


def make_evaluator(model, mesh, rules, pairs, ai, vocab, max_len, batch_size):
  """params -> the reward model's accuracy vs human labels and vs AI labels (where known) and
  loss, as `preference_evaluator`; P(A) = sigmoid(r_A - r_B) of its rewards."""
  arrays, _ = pair_arrays(pairs, [0.5] * len(pairs), vocab, max_len)
  fn = jax.jit(lambda params, t, m: pair_rewards(model, params, t, m))

  def rewards(params):
    batches = batched.fixed_batches((arrays["tokens"], arrays["input_mask"]), batch_size)
    return batched.run_batches(functools.partial(fn, params), batches, mesh, rules)  # the last batch padded

  return preference_evaluator(rewards, pairs, ai)


def preference_evaluator(rewards, pairs, ai):
  """params -> accuracy vs human labels and vs AI labels (where known), loss; with full=True
  also the rewards, P(A) and both labels of every pair (for statistics and calibration).
  rewards(params) -> [N, 2]: any pair of scores whose difference is the log-odds that A is
  preferred (a reward model's rewards, DPO's implicit rewards)."""
  human = np.asarray([p["human_choice"] for p in pairs])
  ai = ai.for_pairs(pairs, "the held-out pairs", strict=False) if isinstance(ai, AiLabels) else ai
  ai_p = np.asarray([ai.get(p["id"], np.nan) if ai else np.nan for p in pairs])

  def evaluate(params, full: bool = False) -> dict:
    r = rewards(params)
    prob_a = 1 / (1 + np.exp(-(r[:, 0] - r[:, 1])))
    out = {}
    known = human >= 0
    if known.any():
      out["accuracy_human"] = float(np.mean((prob_a[known] > 0.5) == (human[known] == 0)))
      y = (human[known] == 0).astype(float)
      out["loss_human"] = float(
        -np.mean(y * np.log(prob_a[known] + 1e-12) + (1 - y) * np.log(1 - prob_a[known] + 1e-12))
      )
    has_ai = ~np.isnan(ai_p)
    if has_ai.any():
      out["accuracy_ai"] = float(np.mean((prob_a[has_ai] > 0.5) == (ai_p[has_ai] > 0.5)))
      out["mean_abs_error_ai"] = float(np.mean(np.abs(prob_a[has_ai] - ai_p[has_ai])))
    if full:  # the counts behind the accuracies (for their intervals) and the arrays behind them
      out["pairs_human"], out["pairs_ai"] = int(known.sum()), int(has_ai.sum())
      out["_rewards"], out["_prob_a"], out["_human"], out["_ai"] = r, prob_a, human, ai_p
    return out

  return evaluate


__all__ = [
  "DEFINITIONS",
  "accuracy_intervals",
  "LABEL_SOURCES",
  "labeled_examples",
  "make_evaluator",
  "pair_arrays",
  "preference_evaluator",
  "read_ai_labels",
  "split_pairs",
  "train_eval_pairs",
]
