"""The evaluation's tables: pairwise win rates (raw and length-controlled), Welch tests
against a baseline, a ranking, harmless rates and lengths; written as eval.json, eval.md and
winrates.png, and reused by the pipeline report."""

from __future__ import annotations

import itertools
import os

import numpy as np

from rlaif_jax import data, records, writers
from rlaif_jax.evaluation import stats

DEFINITIONS = {
  "win_rate": "win rate: share of the prompts the judge scored (a pair too long for it is left out) on which its "
  "P(row's response preferred) > 0.5; a tie (p within 1e-6 of 0.5, as on identical responses) counts half",
  "interval": "[low, high]: the {pct}% Wilson score interval of a share (z = {z:.2f})",
  "length_controlled": "length-controlled win rate (LC): the win rate read at equal length, sigmoid(b0) of the "
  "logistic regression of the win on b0 + b1 d, d the row's response length minus the column's in tokens; "
  "interval sigmoid(b0 -+ z se(b0))",
  "slope": "slope per token: b1 of that regression",
  "ties": "ties: prompts with p within 1e-6 of 0.5 (identical responses)",
  "welch": "difference, t, df, p-value: Welch's unequal-variance t-test of A's and B's win indicators against the "
  "baseline (two-sided)",
  "ranking": "ranking: policies by mean win rate against the other policies (the mean of their row of the matrix); "
  "no interval, as a policy's comparisons share its responses to each prompt and are not independent draws; scores "
  "equal to {decimals} decimals share a rank (listed by name); neighbours are not separated when the head-to-head "
  "win rate's interval contains 0.5",
  "harmless": "harmless rate: share of the responses to the harmlessness prompts that the judge, reading each on "
  "its own, gives P(harmless) > 0.5; mean P(harmless) is that probability's mean",
  "scores": "mean reward: the evaluation scorer's reward averaged over a policy's responses; interval mean -+ z "
  "std / sqrt(n)",
  "length": "length: tokens of a response, its stop token included",
  "ended": "ended: share of responses that stopped on a stop token (EOS, or the newline where the task's stop "
  "rule ends at the first line) before max_new_tokens; the rest were cut at max_new_tokens",
}


def win_tables(gens, judged, names, baseline, confidence) -> dict:
  """Pairwise win rates (raw and length-controlled), Welch tests vs the baseline, ranking."""
  wins, pairwise = {}, {a: {} for a in names}
  for (a, b), rows in judged.items():
    # a pair the judge could not fit in its max_len has p_a None: left out, and counted
    keep = [i for i, r in enumerate(rows) if r.get("p_a") is not None]
    w = stats.win_indicators([rows[i]["p_a"] for i in keep])
    diff = np.asarray([gens[a][i]["length"] - gens[b][i]["length"] for i in keep], np.float64)
    wins[(a, b)], wins[(b, a)] = w, 1 - w
    for x, y, wx, d in ((a, b, w, diff), (b, a, 1 - w, -diff)):
      pairwise[x][y] = {
        **stats.rate_with_interval(wx, confidence),
        "ties": int(np.sum(wx == 0.5)),
        "not_judged": len(rows) - len(keep),
        "length_controlled": stats.length_controlled_win_rate(wx, d, confidence),
      }
  tests = []
  if baseline in names:
    others = [n for n in names if n != baseline]
    for x, y in itertools.combinations(others, 2):
      test = stats.welch_test(wins[(x, baseline)], wins[(y, baseline)])
      tests.append({"a": x, "b": y, "versus": baseline, **test})
  return {"pairwise": pairwise, "tests": tests, **stats.ranking_summary(pairwise)}


def _fmt(v: dict) -> str:
  return f"{v['rate']:.2f} [{v['low']:.2f}, {v['high']:.2f}]"


def _with_lc(v: dict) -> str:
  return f"{_fmt(v)} (LC {v['length_controlled']['rate']:.2f})"


def markdown_tables(result: dict) -> list[str]:
  """The evaluation's tables in markdown (used by eval.md and the pipeline report)."""
  names = list(result["policies"])
  pct = int(round(result["confidence"] * 100))
  lines = [
    f"Win rate of the row policy against the column policy on {result['prompts']} prompts of "
    f"{data.source_name(result['task'], result['split'])}, judged by {result['judge']} "
    f"({result['judge_prompt']}, both orders), "
    f"with {pct}% Wilson intervals; beside each, the length-controlled win rate (LC: read at equal length, see "
    f"below). {result['ties']}.",
    "",
    "| policy | " + " | ".join(names) + " |",
    "| --- |" + " --- |" * len(names),
  ]
  for a in names:
    cells = [("-" if a == b else _with_lc(result["pairwise"][a][b])) for b in names]
    lines.append(f"| {a} | " + " | ".join(cells) + " |")
  base = result.get("baseline")
  if base:
    lines += [
      "",
      f"Against {base}: raw and length-controlled win rates (logistic regression of the win on the "
      f"length difference in tokens, read at equal length), mean length in tokens.",
      "",
      "| policy | win rate | length-controlled | slope per token | ties | mean length |",
      "| --- | --- | --- | --- | --- | --- |",
    ]
    for a in names:
      if a != base:
        v = result["pairwise"][a][base]
        lc = v["length_controlled"]
        lines.append(
          f"| {a} | {_fmt(v)} | {_fmt(lc)} | {lc['slope_per_token']:+.3f} | {v['ties']} | "
          f"{result['lengths'][a]['mean']:.1f} |"
        )
  if result.get("tests"):
    lines += [
      "",
      f"Welch two-sample tests on win indicators against {base} (is A's win rate different from B's?):",
      "",
      "| A | B | difference | t | df | p-value |",
      "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in result["tests"]:
      lines.append(f"| {t['a']} | {t['b']} | {t['diff']:+.3f} | {t['t']:.2f} | {t['df']:.1f} | {t['p_value']:.3g} |")
  lines += ["", *ranking_lines(result)]
  if result.get("harmless"):
    lines += [
      "",
      f"Harmless rate on {result['harmless_task']} (each response judged on its own; harmless when P(harmless) > 0.5):",
      "",
      "| policy | harmless rate | mean P(harmless) | n |",
      "| --- | --- | --- | --- |",
    ]
    for a, v in result["harmless"].items():
      lines.append(f"| {a} | {_fmt(v)} | {v['mean_p']:.3f} | {v['n']} |")
  if result.get("scores"):
    lines += [
      "",
      f"Mean reward of each policy's responses under the evaluation scorer, with {pct}% intervals:",
      "",
      "| policy | mean reward | std | n |",
      "| --- | --- | --- | --- |",
    ]
    for a, v in result["scores"].items():
      lines.append(f"| {a} | {v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}] | {v['std']:.3f} | {v['n']} |")
  lines += [
    "",
    "Response length (tokens):",
    "",
    "| policy | mean | std | median | p90 | min | max | ended |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for a in names:
    s = result["lengths"][a]
    lines.append(
      f"| {a} | {s['mean']:.1f} | {s['std']:.1f} | {s['median']:.0f} | {s['p90']:.0f} | {s['min']:.0f} | "
      f"{s['max']:.0f} | {_ended(result, a)} |"
    )
  return lines


def ranking_text(ranking) -> str:
  """ "1. a (0.610), 2. b (0.520), 2. c (0.520), 4. d (0.300)": tied scores share a rank."""
  places = stats.shared_ranks(ranking)
  return ", ".join(f"{r}. {name} ({score:.{stats.RANK_DECIMALS}f})" for r, (name, score) in zip(places, ranking))


def ranking_lines(result: dict) -> list[str]:
  """The ranking and the neighbours in it that their head-to-head comparison does not separate."""
  close = stats.not_separated(result["ranking"], result["pairwise"])
  pct = int(round(result.get("confidence", 0.95) * 100))
  if close:
    note = f"Not separated by their head-to-head win rate ({pct}% interval contains 0.5): "
    note += "; ".join(f"{a} and {b}" for a, b in close) + "."
  else:
    note = f"Each policy's head-to-head win rate against the next one down has a {pct}% interval clear of 0.5."
  ranking = ranking_text(result["ranking"])
  return [f"Ranking (mean win rate against the other policies; equal scores share a rank): {ranking}.", "", note]


def definitions(result: dict) -> dict:
  """The DEFINITIONS of what markdown_tables shows for this result, filled in."""
  shown = ["win_rate", "interval", "length_controlled"]
  shown += ["slope", "ties"] if result.get("baseline") else []
  shown += ["welch"] if result.get("tests") else []
  shown += ["ranking"] + (["harmless"] if result.get("harmless") else []) + (["scores"] if result.get("scores") else [])
  confidence = result.get("confidence", 0.95)
  fill = {"pct": int(round(confidence * 100)), "z": stats.normal_quantile(confidence), "decimals": stats.RANK_DECIMALS}
  return {k: DEFINITIONS[k].format(**fill) for k in [*shown, "length", "ended"]}


def length_tables(gens: dict, names, confidence: float) -> dict:
  """{lengths, ended, ended_interval}: each policy's length statistics and the share of its
  responses that ended on a stop token, with its Wilson interval."""
  ended = {n: stats.rate_with_interval([float(r["ended"]) for r in gens[n]], confidence) for n in names}
  return {
    "lengths": {n: stats.length_stats([r["length"] for r in gens[n]]) for n in names},
    "ended": {n: v["rate"] for n, v in ended.items()},
    "ended_interval": {n: [v["low"], v["high"]] for n, v in ended.items()},
  }


def _ended(result: dict, name: str) -> str:
  interval = result.get("ended_interval", {}).get(name)
  rate = result["ended"][name]
  return f"{rate:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else f"{rate:.2f}"


def write_outputs(result: dict, workdir: str) -> None:
  from rlaif_jax import plots

  result["winrates_png"] = plots.plot_win_rates(result, os.path.join(workdir, "winrates.png"))
  records.write_json(os.path.join(workdir, "eval.json"), result)
  lines = [
    "# Evaluation",
    "",
    *markdown_tables(result),
    "",
    "Plots: winrates.png. Blinded sheets for human raters: "
    "human/sheet.csv, human/sheet.html (key: human/key.json; import with "
    "`python -m rlaif_jax.evaluation.import_human`).",
    *writers.definitions_markdown(definitions(result)),
  ]
  records.write_text(os.path.join(workdir, "eval.md"), "\n".join(lines) + "\n")
