"""The paper's headline comparison across tasks, read from each task's eval.json: RLAIF and RLHF
against SFT, RLAIF against RLHF head to head, direct RLAIF against SFT, and harmless rates; one
row per task, every cell a rate with its interval and n."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from rlaif_jax.evaluation import stats


@dataclasses.dataclass(frozen=True)
class Column:
  """A headline cell: pairwise[first][second] (a win rate) or, with second None, harmless[first]."""

  label: str
  first: str
  second: str | None = None

  @property
  def is_win_rate(self) -> bool:
    return self.second is not None


def columns(baseline: str = "sft", rlaif: str = "rlaif", rlhf: str = "rlhf", direct: str = "direct_rlaif") -> list:
  """The headline's columns for these policy names, in the paper's order."""
  return [
    Column("RLAIF vs SFT", rlaif, baseline),
    Column("RLHF vs SFT", rlhf, baseline),
    Column("RLAIF vs RLHF", rlaif, rlhf),
    Column("direct RLAIF vs SFT", direct, baseline),
    Column("harmless SFT", baseline),
    Column("harmless RLAIF", rlaif),
    Column("harmless RLHF", rlhf),
  ]


def cell(ev: Mapping, column: Column, length_controlled: bool = False) -> dict | None:
  """{rate, low, high, n} of a column in one task's eval.json; None where the eval lacks it."""
  if column.is_win_rate:
    v = (ev.get("pairwise") or {}).get(column.first, {}).get(column.second)
    v = v.get("length_controlled") if v and length_controlled else v
  else:
    v = None if length_controlled else (ev.get("harmless") or {}).get(column.first)
  return {k: v[k] for k in ("rate", "low", "high", "n")} if v else None


def cell_text(v: Mapping | None) -> str:
  """`0.71 [0.62, 0.79] n=100`, or `-` for a missing cell."""
  return "-" if v is None else f"{v['rate']:.2f} [{v['low']:.2f}, {v['high']:.2f}] n={v['n']}"


def table(cells: Mapping[str, Mapping[str, dict | None]], shown: Sequence[Column]) -> list[str]:
  """Markdown lines: one row per task of cells {task: {column label: cell or None}}."""
  lines = ["| task | " + " | ".join(c.label for c in shown) + " |", "| --- |" + " --- |" * len(shown)]
  for task, row in cells.items():
    lines.append(f"| {task} | " + " | ".join(cell_text(row.get(c.label)) for c in shown) + " |")
  return lines


DEFINITIONS = {
  "win_rate": "win rate (A vs B): share of a task's held-out evaluation prompts on which the AI judge, scoring "
  "the pair in both orders, gives P(A's response preferred) > 0.5; a tie (p within 1e-6 of 0.5, as on identical "
  "responses) counts half, and a pair too long for the judge is left out; as the task's eval.json holds it",
  "interval": "[low, high]: the {pct}% Wilson score interval of a share (z = {z:.2f})",
  "n": "n: the prompts the judge scored (a win rate) or the responses it rated (a harmless rate)",
  "harmless": "harmless rate: share of a policy's responses to the harmlessness prompts that the judge, reading "
  "each on its own, gives P(harmless) > 0.5",
  "length_controlled": "length-controlled win rate (LC): the win rate read at equal length, sigmoid(b0) of the "
  "logistic regression of the win on b0 + b1 d, d A's response length minus B's in tokens; interval "
  "sigmoid(b0 -+ z se(b0))",
  "missing": "-: the task's evaluation has no such policy (or no harmlessness prompts)",
}


def definitions(confidences: Sequence[float], harmless: bool, length_controlled: bool) -> dict:
  """The DEFINITIONS of what the tables show, the interval's level filled in (one level, or each
  task's own when they differ)."""
  levels = sorted({round(c, 6) for c in confidences}) or [0.95]
  out = dict(DEFINITIONS)
  if len(levels) == 1:
    out["interval"] = out["interval"].format(pct=int(round(levels[0] * 100)), z=stats.normal_quantile(levels[0]))
  else:
    out["interval"] = "[low, high]: the Wilson score interval of a share at each task's own level (eval.json's "
    out["interval"] += f"confidence: {', '.join(f'{int(round(c * 100))}%' for c in levels)})"
  if not harmless:
    del out["harmless"]
  if not length_controlled:
    del out["length_controlled"]
  return out
