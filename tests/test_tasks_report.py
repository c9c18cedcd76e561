"""The tasks report: the paper's headline table over three tasks' pipeline folders, read from
hand-written eval.json files (nothing recomputed)."""

import json
import os
import re

import pytest

from rlaif_jax import records
from rlaif_jax.stages import tasks_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rate(rate, low, high, n, lc=None):
  lc = lc or (rate, low, high)
  length_controlled = {"rate": lc[0], "low": lc[1], "high": lc[2], "slope_per_token": 0.0, "n": n}
  return {
    "rate": rate,
    "low": low,
    "high": high,
    "n": n,
    "ties": 0,
    "not_judged": 0,
    "length_controlled": length_controlled,
  }


def _task(folder, judge, pairwise, harmless=None, disclaimer=None, report_md=True):
  """A pipeline folder as the evaluate and report stages leave it: evaluate/eval.json, report.json
  (and report.md, eval.md unless report_md is False)."""
  ev = {"task": "tldr_prompts", "split": "test", "prompts": 100, "baseline": "sft", "judge": judge}
  ev |= {"judge_source": f"checkpoint:/ckpt/{judge}", "judge_prompt": "detailed", "confidence": 0.95}
  ev |= {"pairwise": pairwise} | ({"harmless": harmless, "harmless_task": "hh_prompts/test"} if harmless else {})
  records.write_json(os.path.join(folder, "evaluate", "eval.json"), ev)
  records.write_json(os.path.join(folder, "report.json"), {"title": "pipeline", "disclaimer": disclaimer})
  if report_md:
    records.write_text(os.path.join(folder, "report.md"), "# pipeline\n")
    records.write_text(os.path.join(folder, "evaluate", "eval.md"), "# Evaluation\n")
  return str(folder)


def _three_tasks(tmp_path) -> dict:
  """summarization: every policy, no harmless rates; helpful: no rlhf policy; harmless: harmless rates."""
  summarization = {
    "rlaif": {"sft": _rate(0.71, 0.62, 0.79, 100, lc=(0.66, 0.55, 0.75)), "rlhf": _rate(0.5, 0.4, 0.6, 100)},
    "rlhf": {"sft": _rate(0.73, 0.64, 0.81, 100)},
    "direct_rlaif": {"sft": _rate(0.6, 0.5, 0.69, 100)},
  }
  helpful = {"rlaif": {"sft": _rate(0.63, 0.53, 0.72, 96)}, "direct_rlaif": {"sft": _rate(0.55, 0.45, 0.65, 96)}}
  harmless = {"rlaif": {"sft": _rate(0.52, 0.42, 0.62, 90), "rlhf": _rate(0.49, 0.39, 0.59, 90)}}
  harmless["rlhf"] = {"sft": _rate(0.51, 0.41, 0.61, 90)}
  rates = {
    "sft": {"rate": 0.64, "low": 0.54, "high": 0.73, "n": 100, "mean_p": 0.6},
    "rlaif": {"rate": 0.88, "low": 0.8, "high": 0.93, "n": 100, "mean_p": 0.8},
    "rlhf": {"rate": 0.76, "low": 0.67, "high": 0.83, "n": 100, "mean_p": 0.7},
  }
  tiny = "Tiny models: a plumbing check."
  return {
    "summarization": _task(tmp_path / "summarization", "judge_a", summarization, disclaimer=tiny),
    "helpful": _task(tmp_path / "helpful", "judge_a", helpful, disclaimer=tiny, report_md=False),
    "harmless": _task(tmp_path / "runs" / "harmless", "judge_b", harmless, harmless=rates),
  }


def _row(md: str, task: str, after: str = "") -> list[str]:
  text = md.split(after, 1)[1] if after else md
  line = next(line for line in text.splitlines() if line.startswith(f"| {task} |"))
  return [c.strip() for c in line.strip("|").split("|")][1:]


def test_headline_table_reads_every_cell_with_interval_and_n(tmp_path):
  out = tmp_path / "tasks"
  summary = tasks_report.run_tasks_report(str(out), _three_tasks(tmp_path), title="Three tasks")
  md = (out / "report.md").read_text()
  assert md.startswith("# Three tasks\n")
  head = "| task | RLAIF vs SFT | RLHF vs SFT | RLAIF vs RLHF | direct RLAIF vs SFT | harmless SFT | harmless RLAIF "
  assert head + "| harmless RLHF |" in md and md.index(head) < md.index("## Length-controlled")
  assert _row(md, "summarization") == [
    "0.71 [0.62, 0.79] n=100", "0.73 [0.64, 0.81] n=100", "0.50 [0.40, 0.60] n=100", "0.60 [0.50, 0.69] n=100",
    "-", "-", "-",
  ]  # fmt: skip
  assert _row(md, "helpful") == ["0.63 [0.53, 0.72] n=96", "-", "-", "0.55 [0.45, 0.65] n=96", "-", "-", "-"]
  assert _row(md, "harmless") == [
    "0.52 [0.42, 0.62] n=90", "0.51 [0.41, 0.61] n=90", "0.49 [0.39, 0.59] n=90", "-",
    "0.64 [0.54, 0.73] n=100", "0.88 [0.80, 0.93] n=100", "0.76 [0.67, 0.83] n=100",
  ]  # fmt: skip
  lc = _row(md, "summarization", after="## Length-controlled")
  assert lc == [
    "0.66 [0.55, 0.75] n=100",
    "0.73 [0.64, 0.81] n=100",
    "0.50 [0.40, 0.60] n=100",
    "0.60 [0.50, 0.69] n=100",
  ]
  # the judge of each task, links relative to the report, and a warning that the judges differ
  assert "- summarization: judged by judge_a (`checkpoint:/ckpt/judge_a`" in md
  assert "- harmless: judged by judge_b (`checkpoint:/ckpt/judge_b`" in md and "different judges" in md
  assert "[report.md](../summarization/report.md)" in md and "[eval.md](../summarization/evaluate/eval.md)" in md
  assert "[report.md](../runs/harmless/report.md)" in md and "helpful: judged" in md and "no report.md" in md
  assert "harmless rates on hh_prompts/test" in md.split("- harmless:")[1]
  # the tasks' one disclaimer once, naming the tasks that give it
  assert md.count("Tiny models: a plumbing check.") == 1 and "> **summarization, helpful: Tiny models" in md
  definitions = md.split("\n## Definitions\n", 1)[1]
  for name in ("win rate (A vs B)", "[low, high]: the 95% Wilson", "n:", "harmless rate:", "length-controlled", "-:"):
    assert f"\n- {name}" in definitions, name
  assert md.count("## Definitions") == 1
  report = json.loads((out / "report.json").read_text())
  assert report["tasks"]["helpful"]["headline"]["RLHF vs SFT"] is None
  assert report["tasks"]["harmless"]["headline"]["harmless RLAIF"] == {"rate": 0.88, "low": 0.8, "high": 0.93, "n": 100}
  assert summary["tasks"] == ["summarization", "helpful", "harmless"]


def test_tasks_report_draws_win_and_harmless_rates(tmp_path):
  import matplotlib.image

  out = tmp_path / "tasks"
  tasks_report.run_tasks_report(str(out), _three_tasks(tmp_path))
  png = out / "tasks_report.png"
  assert "![win and harmless rates](tasks_report.png)" in (out / "report.md").read_text()
  image = matplotlib.image.imread(str(png))
  assert png.stat().st_size > 10_000 and image.shape[1] > 2 * image.shape[0] and image[..., :3].std() > 0.05


def test_harmless_definition_only_when_a_task_has_harmless_rates(tmp_path):
  tasks = _three_tasks(tmp_path)
  tasks_report.run_tasks_report(str(tmp_path / "two"), {k: tasks[k] for k in ("summarization", "helpful")})
  md = (tmp_path / "two" / "report.md").read_text()
  assert "harmless rate:" not in md and "different judges" not in md


def test_a_missing_task_folder_or_eval_names_the_task_and_the_path(tmp_path):
  tasks = _three_tasks(tmp_path)
  gone = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=rf"task_dirs\['helpful'\]='{re.escape(gone)}': no such folder$"):
    tasks_report.run_tasks_report(str(tmp_path / "out"), {**tasks, "helpful": gone})
  os.makedirs(tmp_path / "not_evaluated")
  eval_json = os.path.join(tmp_path / "not_evaluated", "evaluate", "eval.json")
  with pytest.raises(FileNotFoundError, match=rf"task_dirs\['harmless'\]=.*: no {re.escape(eval_json)} "):
    tasks_report.run_tasks_report(str(tmp_path / "out"), {**tasks, "harmless": str(tmp_path / "not_evaluated")})
  assert not (tmp_path / "out" / "report.md").exists()


def test_the_run_file_runs_the_stage_from_gin(tmp_path):
  import gin

  from rlaif_jax import gin_setup, pipeline
  from rlaif_jax.stages.registry import STAGES

  tasks = _three_tasks(tmp_path)
  gin.clear_config()
  try:
    gin_setup.parse_gin(
      ["gin/runs/tasks_report.gin"], [f"WORKDIR = '{tmp_path}/report'", f"TASK_DIRS = {tasks!r}"], [ROOT]
    )
    results = pipeline.run()
  finally:
    gin.clear_config()
  assert list(results) == ["tasks_report"] and "tasks_report" in STAGES
  assert "| helpful | 0.63 [0.53, 0.72] n=96 | - |" in (tmp_path / "report" / "report.md").read_text()
