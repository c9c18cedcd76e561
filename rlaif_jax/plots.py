"""PNG plots of what people would rather look at than read."""

from __future__ import annotations

import os
from collections.abc import Sequence


def plot_curves(records: Sequence[dict], keys: Sequence[str], path: str, title: str = "") -> str | None:
  """One panel per metric key, value against step; skips keys never logged. Returns the path."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = [k for k in keys if any(k in r for r in records)]
  if not keys:
    return None
  cols = min(len(keys), 4)
  rows = -(-len(keys) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
  for ax in axes.flat[len(keys) :]:
    ax.axis("off")
  for ax, key in zip(axes.flat, keys):
    points = [(r["step"], r[key]) for r in records if key in r]
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
    ax.set_xlabel("step")
    ax.set_title(key)
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_calibration(bins: Sequence[dict], path: str, title: str, xlabel: str, ylabel: str) -> str:
  """Predicted probability against the observed rate, one dot per bin sized by its count."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ax.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
  ax.scatter([b["predicted"] for b in bins], [b["observed"] for b in bins], s=[10 + 4 * b["count"] for b in bins])
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_title(title, fontsize=9)
  ax.legend(loc="upper left")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
