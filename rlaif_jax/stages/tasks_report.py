"""The `tasks_report` stage: one report over the paper's tasks (summarization, helpful and
harmless dialogue), each a pipeline run folder with its own evaluate/eval.json and report.

Nothing is recomputed: the headline table (RLAIF and RLHF against SFT, RLAIF against RLHF, direct
RLAIF against SFT, harmless rates) is read cell by cell from each task's eval.json, beside the
judge of each task and a link to its own report; tasks_report.png draws the same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from rlaif_jax import data, plots, records, writers
from rlaif_jax.evaluation import headline
from rlaif_jax.stages.base import stage


def read_task(task: str, folder: str, eval_folder: str) -> tuple[dict, dict]:
  """(eval.json, report.json or {}) of one task's pipeline folder; a FileNotFoundError naming the
  task and the path when the folder or its eval.json is missing."""
  setting = f"run_tasks_report.task_dirs[{task!r}]={folder!r}"
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{setting}: no such folder")
  path = os.path.join(folder, eval_folder, "eval.json")
  ev = records.read_json(path)
  if ev is None:
    raise FileNotFoundError(f"{setting}: no {path} (run that task's evaluate stage first)")
  return ev, records.read_json(os.path.join(folder, "report.json"), {})


def _link(path: str, workdir: str) -> str:
  name = os.path.basename(path)
  return f"[{name}]({os.path.relpath(path, workdir)})" if os.path.exists(path) else f"no {name}"


def task_lines(evals: Mapping[str, dict], task_dirs: Mapping[str, str], eval_folder: str, workdir: str) -> list[str]:
  """Per task: its judge, what it was judged on, and links to its own report and eval.md."""
  lines = []
  for task, ev in evals.items():
    harmless = f"; harmless rates on {ev.get('harmless_task')}" if ev.get("harmless") else ""
    report, eval_md = (os.path.join(task_dirs[task], *p) for p in (("report.md",), (eval_folder, "eval.md")))
    lines.append(
      f"- {task}: judged by {ev.get('judge')} (`{ev.get('judge_source')}`, prompt {ev.get('judge_prompt')}) on "
      f"{ev.get('prompts')} prompts of {data.source_name(ev.get('task'), ev.get('split'))}{harmless}. "
      f"Its report: {_link(report, workdir)}, evaluation: {_link(eval_md, workdir)}."
    )
  if len({ev.get("judge_source") for ev in evals.values()}) > 1:
    lines += ["", "The tasks were judged by different judges: rates compare within a task, not across tasks."]
  return lines + [""]


def disclaimer_lines(disclaimer: str | None, tasks: Mapping[str, dict]) -> list[str]:
  """This report's disclaimer, then each distinct one of the tasks' reports with the tasks saying it."""
  said: dict[str, list[str]] = {}
  for task, info in tasks.items():
    if info.get("disclaimer"):
      said.setdefault(info["disclaimer"], []).append(task)
  lines = [f"> **{disclaimer}**", ""] if disclaimer else []
  for text, names in said.items():
    lines += [f"> **{', '.join(names)}: {text}**", ""]
  return lines


def plot_tasks(cells: Mapping[str, dict], cols, level: str, path: str) -> str | None:
  """Win rates against SFT (and RLAIF against RLHF) and harmless rates per task, with intervals."""
  win, harmless = f"win rate ({level} interval)", f"harmless rate ({level} interval)"
  panels: dict = {win: {}, harmless: {}}
  for task, row in cells.items():
    for c in cols:
      if row.get(c.label) is not None:
        v = row[c.label]
        label = c.label if c.is_win_rate else c.label.removeprefix("harmless ")
        panels[win if c.is_win_rate else harmless].setdefault(task, {})[label] = (v["rate"], [v["low"], v["high"]])
  return plots.plot_interval_panels(panels, path, references={win: 0.5})


def _level(evals: Mapping[str, dict]) -> str:
  levels = {ev.get("confidence", 0.95) for ev in evals.values()}
  return f"{int(round(levels.pop() * 100))}%" if len(levels) == 1 else "each task's"


def report_lines(title, disclaimer, names: dict, tasks: dict, evals: dict, task_dirs, eval_folder, workdir, png):
  """report.md's lines: the headline table, each task's judge and links, the length-controlled
  table, the plot and the definitions; tasks {task: {headline, length_controlled, disclaimer}}."""
  cols = headline.columns(**names)
  wins = [c for c in cols if c.is_win_rate]
  who = f"RLAIF = `{names['rlaif']}` (RL on the reward model trained on AI labels, distilled RLAIF), RLHF = "
  who += f"`{names['rlhf']}` (RL on the reward model trained on human labels), direct RLAIF = `{names['direct']}` "
  who += f"(RL on the labeler's direct scores), SFT = `{names['baseline']}`."
  lines = [f"# {title}", "", *disclaimer_lines(disclaimer, tasks), "## Headline: win rates and harmless rates", ""]
  lines += [f"Each cell: rate [{_level(evals)} interval] n, read from the task's eval.json. {who}", ""]
  lines += headline.table({t: v["headline"] for t, v in tasks.items()}, cols)
  lines += ["", *task_lines(evals, task_dirs, eval_folder, workdir), "## Length-controlled win rates", ""]
  lines += ["The same comparisons read at equal response length (LC, see the definitions).", ""]
  lines += [*headline.table({t: v["length_controlled"] for t, v in tasks.items()}, wins), ""]
  lines += [f"![win and harmless rates]({os.path.basename(png)})"] if png else []
  harmless = any(v["headline"][c.label] is not None for v in tasks.values() for c in cols if not c.is_win_rate)
  confidences = [ev.get("confidence", 0.95) for ev in evals.values()]
  return lines + writers.definitions_markdown(headline.definitions(confidences, harmless, length_controlled=True))


@stage
def run_tasks_report(
  workdir: str,
  task_dirs: Mapping[str, str],
  title: str = "RLAIF against RLHF and SFT across tasks",
  disclaimer: str | None = None,
  baseline: str = "sft",
  rlaif: str = "rlaif",
  rlhf: str = "rlhf",
  direct: str = "direct_rlaif",
  eval_folder: str = "evaluate",
) -> dict:
  """Writes <workdir>/report.md, report.json and tasks_report.png over task_dirs {task: its
  pipeline's workdir}, whose <eval_folder>/eval.json must exist; the policies are named by
  baseline, rlaif, rlhf and direct, and a policy a task's evaluation lacks shows as `-`."""
  loaded = {task: read_task(task, folder, eval_folder) for task, folder in task_dirs.items()}
  evals, reports = {t: ev for t, (ev, _) in loaded.items()}, {t: rep for t, (_, rep) in loaded.items()}
  names = {"baseline": baseline, "rlaif": rlaif, "rlhf": rlhf, "direct": direct}
  cols = headline.columns(**names)
  tasks = {
    t: {
      "folder": task_dirs[t], "judge": ev.get("judge"), "judge_source": ev.get("judge_source"),
      "disclaimer": reports[t].get("disclaimer"), "headline": {c.label: headline.cell(ev, c) for c in cols},
      "length_controlled": {c.label: headline.cell(ev, c, True) for c in cols if c.is_win_rate},
    }
    for t, ev in evals.items()
  }  # fmt: skip
  os.makedirs(workdir, exist_ok=True)
  headlines = {t: v["headline"] for t, v in tasks.items()}
  png = plot_tasks(headlines, cols, _level(evals), os.path.join(workdir, "tasks_report.png"))
  lines = report_lines(title, disclaimer, names, tasks, evals, task_dirs, eval_folder, workdir, png)
  report = {"title": title, "disclaimer": disclaimer, "policies": names, "tasks": tasks, "png": png}
  records.write_json(os.path.join(workdir, "report.json"), report)
  path = os.path.join(workdir, "report.md")
  records.write_text(path, "\n".join(lines) + "\n")
  return {"report": path, "report_json": os.path.join(workdir, "report.json"), "tasks": list(tasks)}
