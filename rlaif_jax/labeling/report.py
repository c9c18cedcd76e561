"""How well AI labels agree with human labels: alignment, position bias, calibration."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from rlaif_jax import plots, writers
from rlaif_jax.data.formats import HIGH_CONFIDENCE  # confidence 1, 2, 8, 9: the paper's subset
from rlaif_jax.evaluation import stats
from rlaif_jax.metrics import alignment_accuracy
from rlaif_jax.records import write_json, write_text


def alignment_report(records: Sequence[dict], confidence: float = 0.95) -> dict:
  """Metrics over labeled records that carry human_choice (0: A preferred, 1: B): alignment and
  position bias with Wilson intervals, and alignment on the high-confidence pairs (human
  confidence 1, 2, 8 or 9, where records carry human_confidence) beside the full set."""
  failed = [r for r in records if r.get("p_a") is None]
  labeled = [r for r in records if r.get("human_choice") in (0, 1) and r.get("p_a") is not None]
  out = {"pairs": len(records), "not_labeled": len(failed), "pairs_with_human_labels": len(labeled)}
  if not labeled:
    return out
  p_a = np.asarray([r["p_a"] for r in labeled])
  human = np.asarray([r["human_choice"] for r in labeled])
  out["alignment"] = float(alignment_accuracy(p_a, human))
  agree = ((p_a > 0.5) == (human == 0)).astype(float)
  out["alignment_interval"] = _interval(agree, confidence)
  sure = np.asarray([r.get("human_confidence") in HIGH_CONFIDENCE for r in labeled])
  out["pairs_high_confidence"] = int(sure.sum())
  if sure.any():
    out["alignment_high_confidence"] = float(agree[sure].mean())
    out["alignment_high_confidence_interval"] = _interval(agree[sure], confidence)
  out["mean_confidence"] = float(np.mean(np.maximum(p_a, 1 - p_a)))
  out["ai_prefers_a"] = float(np.mean(p_a > 0.5))
  out["humans_prefer_a"] = float(np.mean(human == 0))
  p1_ab = np.asarray([r["p1_ab"] for r in labeled])
  out["alignment_order_ab"] = float(alignment_accuracy(p1_ab, human))
  if all(r.get("p1_ba") is not None for r in labeled):
    p1_ba = np.asarray([r["p1_ba"] for r in labeled])
    out["alignment_order_ba"] = float(alignment_accuracy(1 - p1_ba, human))
    # The same position wins in both orders: the labeler followed the slot, not the response.
    same_slot = ((p1_ab > 0.5) == (p1_ba > 0.5)).astype(float)
    out["position_bias"] = float(same_slot.mean())
    out["position_bias_interval"] = _interval(same_slot, confidence)
  return out


def _interval(indicators: np.ndarray, confidence: float) -> list[float]:
  low, high = stats.wilson_interval(float(indicators.sum()), len(indicators), confidence)
  return [low, high]


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


def length_baselines(records: Sequence[dict], lengths: dict) -> dict:
  """Alignment of the "prefer the shorter response" and "prefer the longer" rules over the
  records with a human choice; lengths maps id -> (len A, len B); equal lengths are left out."""
  pairs = [(lengths[r["id"]], r["human_choice"]) for r in records if r.get("human_choice") in (0, 1)]
  pairs = [((a, b), h) for (a, b), h in pairs if a != b]
  if not pairs:
    return {}
  shorter = float(np.mean([(0 if a < b else 1) == h for (a, b), h in pairs]))
  return {"baseline_prefer_shorter": shorter, "baseline_prefer_longer": 1.0 - shorter, "baseline_pairs": len(pairs)}


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
  write_text(os.path.join(workdir, "report.md"), "\n".join(lines) + "\n")
  return report


def with_interval(report: dict, key: str) -> str:
  """value [low, high], or "-" when absent."""
  value, interval = report.get(key), report.get(f"{key}_interval")
  if value is None:
    return "-"
  return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"
