"""How well AI labels agree with human labels: alignment, position bias, calibration."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from rlaif_jax import plots, writers
from rlaif_jax.data.formats import HIGH_CONFIDENCE  # confidence 1, 2, 8, 9: the paper's subset
from rlaif_jax.evaluation import stats
from rlaif_jax.records import write_json, write_text

DEFINITIONS = {
  "pairs_with_human_labels": "pairs with human labels (`pairs_with_human_labels`, the pairs column of comparison "
  "tables): the pairs with both an AI label and a human choice; every share below is over them unless it says "
  "otherwise",
  "not_labeled": "not labeled (`not_labeled`): pairs too long for the labeler's max_len, left without an AI label",
  "p_a": "p_a: the labeler's P(A preferred), the mean of P(first) with A first (p1_ab) and 1 - P(first) with B "
  "first (p1_ba) when both orders are scored",
  "alignment": "alignment: share of pairs where the AI's choice (A when p_a > 0.5, else B) is the human's",
  "pairs_high_confidence": "high-confidence pairs (`pairs_high_confidence`): how many pairs have a human rater's "
  "confidence of 1, 2, 8 or 9 (where the data records it)",
  "alignment_high_confidence": "alignment on high-confidence pairs (`alignment_high_confidence`): alignment over "
  "the pairs whose human rater's confidence is 1, 2, 8 or 9",
  "alignment_order_ab": "order AB / order BA (`alignment_order_ab`, `alignment_order_ba`): alignment of one order "
  "alone, A shown first (A chosen when p1_ab > 0.5) / B shown first (A chosen when 1 - p1_ba > 0.5)",
  "position_bias": "position bias (`position_bias`): share of pairs where the labeler prefers the same position "
  "in both orders ((p1_ab > 0.5) == (p1_ba > 0.5)), i.e. its choice of response flips with the order; 0 is none",
  "mean_confidence": "mean confidence (`mean_confidence`): the mean of max(p_a, 1 - p_a)",
  "ai_prefers_a": "AI prefers A (`ai_prefers_a`): share of pairs with p_a > 0.5",
  "humans_prefer_a": "humans prefer A (`humans_prefer_a`): share of pairs whose human choice is A",
  "baseline_prefer_shorter": "prefer-shorter / prefer-longer baseline (`baseline_prefer_shorter`, "
  "`baseline_prefer_longer`): the alignment of always choosing the shorter / longer response (in characters), over "
  "the pairs with a human choice whose responses differ in length (`baseline_pairs`)",
  "calibration": "calibration: pairs binned by p_a; predicted is the bin's mean p_a, observed the share of its "
  "pairs where humans chose A",
  "interval": "[low, high]: the 95% Wilson score interval of a share",
}


def alignment_report(records: Sequence[dict], confidence: float = 0.95) -> dict:
  """Metrics over labeled records that carry human_choice (0: A preferred, 1: B), as DEFINITIONS
  says: alignment (on all pairs, on the high-confidence ones where records carry human_confidence,
  and in each order), position bias and who prefers A, each with a Wilson interval."""
  failed = [r for r in records if r.get("p_a") is None]
  labeled = [r for r in records if r.get("human_choice") in (0, 1) and r.get("p_a") is not None]
  out = {"pairs": len(records), "not_labeled": len(failed), "pairs_with_human_labels": len(labeled)}
  if not labeled:
    return out
  p_a = np.asarray([r["p_a"] for r in labeled])
  human_a = np.asarray([r["human_choice"] for r in labeled]) == 0
  agree = (p_a > 0.5) == human_a
  _add_rate(out, "alignment", agree, confidence)
  sure = np.asarray([r.get("human_confidence") in HIGH_CONFIDENCE for r in labeled])
  out["pairs_high_confidence"] = int(sure.sum())
  if sure.any():
    _add_rate(out, "alignment_high_confidence", agree[sure], confidence)
  out["mean_confidence"] = float(np.mean(np.maximum(p_a, 1 - p_a)))
  _add_rate(out, "ai_prefers_a", p_a > 0.5, confidence)
  _add_rate(out, "humans_prefer_a", human_a, confidence)
  p1_ab = np.asarray([r["p1_ab"] for r in labeled])
  _add_rate(out, "alignment_order_ab", (p1_ab > 0.5) == human_a, confidence)
  if all(r.get("p1_ba") is not None for r in labeled):
    p1_ba = np.asarray([r["p1_ba"] for r in labeled])
    _add_rate(out, "alignment_order_ba", (1 - p1_ba > 0.5) == human_a, confidence)
    # The same position wins in both orders: the labeler followed the slot, not the response.
    _add_rate(out, "position_bias", (p1_ab > 0.5) == (p1_ba > 0.5), confidence)
  return out


def _add_rate(out: dict, key: str, indicators: np.ndarray, confidence: float) -> None:
  """out[key]: the share of True in indicators [N]; out[key_interval]: its Wilson interval."""
  x = np.asarray(indicators, np.float64)
  out[key] = float(x.mean())
  out[f"{key}_interval"] = list(stats.wilson_interval(float(x.sum()), len(x), confidence))


def definitions(shown) -> dict:
  """The DEFINITIONS of the keys in shown, with p_a and the interval when any of them is there."""
  return writers.shown_definitions(DEFINITIONS, shown, always=("p_a", "interval"))


def calibration_bins(p_a: np.ndarray, human_a: np.ndarray, bins: int = 10) -> list[dict]:
  """Per bin of predicted P(A): the mean prediction, the human rate of preferring A, the count."""
  edges = np.linspace(0, 1, bins + 1)
  idx = np.clip(np.digitize(p_a, edges) - 1, 0, bins - 1)
  return [
    {
      "lo": float(edges[b]),
      "hi": float(edges[b + 1]),
      "predicted": float(p_a[idx == b].mean()),
      "observed": float(human_a[idx == b].mean()),
      "count": int((idx == b).sum()),
    }
    for b in range(bins)
    if (idx == b).any()
  ]


def pair_lengths(pairs: Sequence[dict]) -> dict:
  """id -> (len A, len B) in characters, for length_baselines."""
  return {p["id"]: (len(p["response_a"]), len(p["response_b"])) for p in pairs}


def length_baselines(records: Sequence[dict], lengths: dict, confidence: float = 0.95) -> dict:
  """Alignment of the "prefer the shorter response" and "prefer the longer" rules over the
  records with a human choice, with Wilson intervals; lengths maps id -> (len A, len B); equal
  lengths are left out."""
  pairs = [(lengths[r["id"]], r["human_choice"]) for r in records if r.get("human_choice") in (0, 1)]
  pairs = [((a, b), h) for (a, b), h in pairs if a != b]
  if not pairs:
    return {}
  out = {}
  shorter = np.asarray([(0 if a < b else 1) == h for (a, b), h in pairs])
  _add_rate(out, "baseline_prefer_shorter", shorter, confidence)
  _add_rate(out, "baseline_prefer_longer", ~shorter, confidence)
  return out | {"baseline_pairs": len(pairs)}


def write_report(
  records: Sequence[dict], workdir: str, title: str, lengths: dict | None = None, info: dict | None = None
) -> dict:
  """report.json, report.md and calibration.png under workdir; with lengths (id -> (len A,
  len B)) also the length baselines; info (e.g. the labeler and its source) goes in as is."""
  report = {**(info or {}), **alignment_report(records)}
  if lengths:
    report.update(length_baselines(records, lengths))
  labeled = [r for r in records if r.get("human_choice") in (0, 1) and r.get("p_a") is not None]
  if labeled:
    p_a = np.asarray([r["p_a"] for r in labeled])
    human_a = np.asarray([r["human_choice"] == 0 for r in labeled], float)
    report["calibration"] = calibration_bins(p_a, human_a)
    report["calibration_png"] = plots.plot_calibration(
      report["calibration"],
      os.path.join(workdir, "calibration.png"),
      title,
      "AI P(A preferred)",
      "fraction where humans preferred A",
    )
  write_json(os.path.join(workdir, "report.json"), report, indent=2)
  lines = writers.metrics_markdown(title, report)
  if report.get("alignment") is not None:
    lines += ["", "Alignment with humans on all pairs and on the high-confidence ones (95% Wilson intervals):", ""]
    lines += ["| pairs | count | alignment | position bias |", "| --- | --- | --- | --- |"]
    bias = with_interval(report, "position_bias")
    lines.append(f"| all | {report['pairs_with_human_labels']} | {with_interval(report, 'alignment')} | {bias} |")
    if report.get("pairs_high_confidence"):
      lines.append(
        f"| high confidence (1, 2, 8, 9) | {report['pairs_high_confidence']} | "
        f"{with_interval(report, 'alignment_high_confidence')} | |"
      )
  if report.get("calibration"):
    lines += [
      "",
      "Calibration (predicted P(A) vs how often humans preferred A):",
      "",
      "| bin | predicted | observed | count |",
      "| --- | --- | --- | --- |",
    ]
    lines += [
      f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['predicted']:.3f} | {b['observed']:.3f} | {b['count']} |"
      for b in report["calibration"]
    ]
  lines += writers.definitions_markdown(definitions(report))
  write_text(os.path.join(workdir, "report.md"), "\n".join(lines) + "\n")
  return report


def with_interval(report: dict, key: str) -> str:
  """value [low, high], or "-" when absent."""
  value, interval = report.get(key), report.get(f"{key}_interval")
  if value is None:
    return "-"
  return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"
