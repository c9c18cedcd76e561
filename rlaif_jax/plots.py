"""PNG plots of what people would rather look at than read."""

from __future__ import annotations

import os
from collections.abc import Sequence

from rlaif_jax import partitioning


def _save(fig, path: str) -> str:
  """Writes the figure as a PNG (process 0 of a multi-process job only) and closes it."""
  import matplotlib.pyplot as plt

  if partitioning.is_main_process():
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


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
  return _save(fig, path)


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
  return _save(fig, path)


def _errorbars(ax, labels, values, color, offset=0.0, width=0.8, label=None):
  """Bars of rates with their [low, high] intervals; values: [{rate, low, high}]."""
  xs = [i + offset for i in range(len(labels))]
  rates = [v["rate"] for v in values]
  err = [[r - v["low"] for r, v in zip(rates, values)], [v["high"] - r for r, v in zip(rates, values)]]
  ax.bar(xs, rates, width=width, yerr=err, capsize=4, color=color, label=label)


def plot_win_rates(result: dict, path: str) -> str:
  """The evaluation at a glance: the win-rate matrix, win rates against the baseline (raw and
  length-controlled, with intervals) and harmless rates."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  names = list(result["policies"])
  base = result.get("baseline")
  panels = 1 + bool(base) + bool(result.get("harmless"))
  fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), squeeze=False)
  ax = axes[0, 0]
  m = np.array([[np.nan if a == b else result["pairwise"][a][b]["rate"] for b in names] for a in names])
  ax.imshow(m, vmin=0, vmax=1, cmap="RdBu")
  for i in range(len(names)):
    for j in range(len(names)):
      if i != j:
        ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8)
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
  ax.set_yticks(range(len(names)), names)
  ax.set_title("win rate of row vs column")
  k = 1
  if base:
    ax = axes[0, k]
    others = [n for n in names if n != base]
    _errorbars(ax, others, [result["pairwise"][n][base] for n in others], "tab:blue", -0.2, 0.4, "raw")
    lc = [result["pairwise"][n][base]["length_controlled"] for n in others]
    _errorbars(ax, others, lc, "tab:orange", 0.2, 0.4, "length-controlled")
    ax.axhline(0.5, color="gray", ls="--")
    ax.set_xticks(range(len(others)), others, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(f"win rate vs {base} ({int(result['confidence'] * 100)}% CI)")
    ax.legend(fontsize=8)
    k += 1
  if result.get("harmless"):
    ax = axes[0, k]
    _errorbars(ax, names, [result["harmless"][n] for n in names], "tab:green")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("harmless rate")
  fig.tight_layout()
  return _save(fig, path)


def plot_intervals(groups: dict, path: str, title: str) -> str | None:
  """Grouped bars with intervals: groups {name: {metric: (value, [low, high] or None)}}, one
  colour per metric; None when there is nothing to draw."""
  return plot_interval_panels({title: groups}, path)


def plot_interval_panels(panels: dict, path: str, references: dict | None = None) -> str | None:
  """Side by side, one panel per title in panels {title: groups} as plot_intervals draws them, a
  dashed line at references[title] where given (0.5 for a win rate); panels with nothing to draw
  are left out, and None when none is left."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = {t: g for t, g in panels.items() if any(g.values())}
  if not panels:
    return None
  sizes = [len(g) * max(1, len({m for v in g.values() for m in v})) ** 0.5 for g in panels.values()]
  fig, axes = plt.subplots(1, len(panels), figsize=(sum(max(4.5, 1.6 * s) for s in sizes), 3.8), squeeze=False)
  for ax, (title, groups) in zip(axes[0], panels.items()):
    _grouped_intervals(ax, groups)
    if (references or {}).get(title) is not None:
      ax.axhline(references[title], color="gray", ls="--", lw=1)
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def _grouped_intervals(ax, groups: dict) -> None:
  """One group of bars per name, one colour per metric; a metric a group lacks is left empty."""
  metrics = list(dict.fromkeys(m for g in groups.values() for m in g))
  names, width = list(groups), 0.8 / len(metrics)
  for k, metric in enumerate(metrics):
    values = []
    for n in names:
      value, interval = groups[n].get(metric, (float("nan"), None))
      low, high = interval or (value, value)
      values.append({"rate": value, "low": low, "high": high})
    _errorbars(ax, names, values, f"C{k}", (k - (len(metrics) - 1) / 2) * width, width, metric)
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7)
