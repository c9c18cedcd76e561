"""The paper's experiments measured the paper's way: which pairs a labeling job sees, exemplar
draws, high-confidence alignment, the labelers study, and the report's checks that the RLAIF and
RLHF reward models saw the same pairs and that the judge is neither labeler nor reward source."""

import json
import os

import numpy as np
import pytest
from scipy import stats as sps

from rlaif_jax import models, records
from rlaif_jax.evaluation import stats
from rlaif_jax.labeling import PromptConfig, jobs
from rlaif_jax.labeling.report import alignment_report
from rlaif_jax.stages import labelers as labelers_stage
from rlaif_jax.stages import report as report_stage

PAIRS = [{"id": f"p{i}", "inputs": f"x{i}", "response_a": "a", "response_b": "b"} for i in range(50)]


def test_limit_takes_a_seeded_random_sample_in_dataset_order():
  a = jobs.choose_pairs(PAIRS, 10, "random", seed=3)
  assert a == jobs.choose_pairs(PAIRS, 10, "random", seed=3)  # the same seed, the same pairs
  assert a != jobs.choose_pairs(PAIRS, 10, "random", seed=4)
  positions = [PAIRS.index(p) for p in a]
  assert positions == sorted(positions) and positions != list(range(10)) and len(set(positions)) == 10
  assert jobs.choose_pairs(PAIRS, 10, "first", seed=3) == PAIRS[:10]
  assert jobs.choose_pairs(PAIRS, None, "random", seed=3) == PAIRS
  with pytest.raises(ValueError, match="run_label.sample='top'"):
    jobs.choose_pairs(PAIRS, 10, "top", seed=0)


def test_human_confidence_is_read_from_the_metadata():
  assert jobs.human_confidence({"metadata": json.dumps({"confidence": 8})}) == 8
  assert jobs.human_confidence({"metadata": "{}"}) is None and jobs.human_confidence({}) is None
  assert jobs.human_confidence({"metadata": "not json"}) is None


def test_alignment_on_all_and_high_confidence_pairs_by_hand():
  rng = np.random.default_rng(0)
  recs = []
  for i in range(200):
    human = int(rng.integers(2))
    conf = int(rng.integers(1, 10))
    p_a = float(rng.uniform())
    recs.append({"id": str(i), "p_a": p_a, "p1_ab": p_a, "p1_ba": float(rng.uniform()), "human_choice": human})
    recs[-1]["human_confidence"] = conf
  rep = alignment_report(recs)
  agree = np.asarray([(r["p_a"] > 0.5) == (r["human_choice"] == 0) for r in recs])
  sure = np.asarray([r["human_confidence"] in (1, 2, 8, 9) for r in recs])
  assert rep["alignment"] == pytest.approx(agree.mean())
  assert rep["pairs_high_confidence"] == sure.sum()
  assert rep["alignment_high_confidence"] == pytest.approx(agree[sure].mean())
  low, high = rep["alignment_high_confidence_interval"]
  assert (low, high) == pytest.approx(stats.wilson_interval(agree[sure].sum(), sure.sum()))
  assert low < rep["alignment_high_confidence"] < high
  same = np.asarray([(r["p1_ab"] > 0.5) == (r["p1_ba"] > 0.5) for r in recs])
  assert rep["position_bias"] == pytest.approx(same.mean())
  # every rate has its Wilson interval (scipy's), from indicators computed here
  human_a = np.asarray([r["human_choice"] == 0 for r in recs])
  indicators = {
    "alignment": agree,
    "position_bias": same,
    "ai_prefers_a": np.asarray([r["p_a"] > 0.5 for r in recs]),
    "humans_prefer_a": human_a,
    "alignment_order_ab": np.asarray([r["p1_ab"] > 0.5 for r in recs]) == human_a,
    "alignment_order_ba": np.asarray([r["p1_ba"] < 0.5 for r in recs]) == human_a,
  }
  for key, x in indicators.items():
    ci = sps.binomtest(int(x.sum()), len(x)).proportion_ci(method="wilson")
    assert rep[key] == pytest.approx(x.mean()), key
    np.testing.assert_allclose(rep[f"{key}_interval"], [ci.low, ci.high], atol=1e-12, err_msg=key)
  without = alignment_report([{k: v for k, v in r.items() if k != "human_confidence"} for r in recs])
  assert without["pairs_high_confidence"] == 0 and "alignment_high_confidence" not in without


def test_label_report_md_shows_every_rate_with_an_interval_and_defines_each(tmp_path):
  from rlaif_jax.labeling.report import write_report

  # 6 pairs: the AI picks A in 4 (p_a > 0.5), humans in 3; order BA never picks A (1 - p1_ba = 0.4)
  p_a, human = [0.9, 0.8, 0.7, 0.6, 0.2, 0.1], [0, 0, 1, 1, 0, 1]
  recs = [
    {"id": f"q{i}", "p_a": p, "p1_ab": p, "p1_ba": 0.6, "human_choice": h} for i, (p, h) in enumerate(zip(p_a, human))
  ]
  lengths = {"q0": (1, 2), "q1": (1, 2), "q2": (1, 2), "q3": (2, 1), "q4": (2, 1), "q5": (3, 3)}
  write_report(recs, str(tmp_path), "t", lengths)
  md = (tmp_path / "report.md").read_text()

  def cell(k, n):  # scipy's Wilson interval, printed as the report prints it
    ci = sps.binomtest(k, n).proportion_ci(method="wilson")
    return f"{k / n:.3f} [{ci.low:.3f}, {ci.high:.3f}]"

  assert f"| ai_prefers_a | {cell(4, 6)} |" in md and f"| humans_prefer_a | {cell(3, 6)} |" in md
  assert f"| alignment_order_ba | {cell(3, 6)} |" in md  # right where humans chose B
  # shorter response = human's on q0, q1 (A shorter, humans chose A) and q3 (B shorter, chose B); q5 ties: left out
  assert f"| baseline_prefer_shorter | {cell(3, 5)} |" in md and f"| baseline_prefer_longer | {cell(2, 5)} |" in md
  definitions = md.split("\n## Definitions\n", 1)[1]
  for line in (
    "- position bias (`position_bias`): share of pairs where the labeler prefers the same position in both orders "
    "((p1_ab > 0.5) == (p1_ba > 0.5))",
    "- alignment: share of pairs where the AI's choice (A when p_a > 0.5, else B) is the human's",
    "- prefer-shorter / prefer-longer baseline",
    "- AI prefers A",
    "- [low, high]: the 95% Wilson score interval",
  ):
    assert line in definitions, line


def test_exemplar_draws_show_different_exemplars_and_average_them(tmp_path):
  from rlaif_jax.labeling import Exemplar

  pool = [Exemplar(f"post {i}", f"good {i}", f"bad {i}", 1) for i in range(8)]

  class Recorder:  # stands in for a Labeler: records which exemplar each draw showed
    truncated, shown, max_len = 0, [], 1024

    def label_pairs(self, pairs, config, exemplars, seed=0):
      self.shown.append(exemplars[0].input)
      good = exemplars[0].input.endswith(("0", "2", "4", "6"))  # some draws "align" better
      return [
        {"id": p["id"], "p_a": 0.9 if good else 0.1, "p1_ab": 0.9, "p1_ba": 0.2, "human_choice": 0} for p in pairs
      ]

  labeler = Recorder()
  pairs = [dict(p, human_choice=0) for p in PAIRS[:4]]
  config = PromptConfig(task="helpfulness", num_exemplars=1)
  info = {"labeler": "rec", "prompt_variant": config.name}
  summary = jobs.label_job(labeler, pairs, config, pool, str(tmp_path), 32, 0, info, exemplar_draws=5)
  assert len(set(labeler.shown)) > 1  # the draws differ
  per_draw = [d["alignment"] for d in summary["per_draw"]]
  assert summary["alignment_mean"] == pytest.approx(np.mean(per_draw))
  low, high = summary["alignment_interval"]
  half = 1.959964 * np.std(per_draw, ddof=1) / np.sqrt(5)
  assert (low, high) == pytest.approx((np.mean(per_draw) - half, np.mean(per_draw) + half), abs=1e-5)
  md = open(tmp_path / "report.md").read()
  assert os.path.exists(tmp_path / "draw_4" / "labels.jsonl") and "mean [95% interval]" in md
  ci = sps.binomtest(4, 4).proportion_ci(method="wilson")  # each draw: 4 pairs, all or none aligned
  assert f"| 1.000 [{ci.low:.3f}, {ci.high:.3f}] |" in md
  assert "## Definitions" in md and "\n- mean [95% interval] over draws: " in md and "\n- position bias" in md
  again = Recorder()
  again.shown = []
  jobs.label_job(again, pairs, config, pool, str(tmp_path), 32, 0, info, exemplar_draws=5)
  assert again.shown == []  # a rerun resumes: every draw is already labeled


def test_labelers_stage_compares_labelers_on_the_same_pairs(tmp_path):
  import rlaif_jax.tasks  # noqa: F401

  sources = {
    "narrow": models.ModelSource(config=models.tiny(num_layers=1)),
    "wide": models.ModelSource(config=models.tiny(num_layers=1, embed_dim=128)),
  }
  summary = labelers_stage.run_labelers(
    str(tmp_path), sources, task="tldr_comparisons", split="train", limit=8, max_len=1024, mesh_shape={"data": 1}
  )
  ids = {n: [r["id"] for r in records.read_jsonl(str(tmp_path / n / "labels.jsonl"))] for n in sources}
  assert len(ids["narrow"]) == 8 and sorted(ids["narrow"]) == sorted(ids["wide"])
  rows = summary["labelers"]
  assert rows["narrow"]["source"] != rows["wide"]["source"]
  for row in rows.values():
    assert row["alignment_interval"][0] <= row["alignment"] <= row["alignment_interval"][1]
  table = (tmp_path / "report.md").read_text()
  assert "| narrow |" in table and "| wide |" in table and os.path.exists(tmp_path / "labelers.png")
  definitions = table.split("\n## Definitions\n", 1)[1]
  assert "\n- alignment: " in definitions and "\n- position bias (`position_bias`): " in definitions


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  records.write_json(path, obj)


def test_report_says_whether_the_reward_models_saw_the_same_pairs(tmp_path):
  for name, digest in (("ai", "aaaa"), ("human", "aaaa"), ("sampled", "bbbb")):
    _write(str(tmp_path / name / "report.json"), {"train_pairs_digest": digest, "eval_pairs_digest": "e"})
  same = report_stage._same_pairs({"a": str(tmp_path / "ai"), "h": str(tmp_path / "human")})
  assert "Both reward models were trained on the same pairs" in same[0] and "**" not in same[0]
  assert "Only their training labels differ" in same[0]
  mixed = report_stage._same_pairs({"a": str(tmp_path / "ai"), "s": str(tmp_path / "sampled")})
  assert "**The reward models were trained on different pairs" in mixed[0]


def test_report_warns_when_the_judge_is_the_labeler_or_a_reward_source(tmp_path):
  labeler = models.ModelSource(config=models.tiny(), checkpoint=str(tmp_path / "sft" / "checkpoints"))
  judge = models.ModelSource(config=models.tiny(), checkpoint=str(tmp_path / "judge_sft" / "checkpoints"))
  _write(str(tmp_path / "labels" / "report.json"), {"labeler_source": labeler.identity})
  _write(str(tmp_path / "rl" / "summary.json"), {"reward_source": labeler.identity})
  dirs = ({"ai labels": str(tmp_path / "labels")}, {"direct": str(tmp_path / "rl")}, {})
  own = report_stage.judge_lines({"judge": judge.name, "judge_source": judge.identity}, *dirs)
  assert own[0].startswith("Judge: judge_sft") and not any("Warning" in line for line in own)
  self_judged = report_stage.judge_lines({"judge": labeler.name, "judge_source": labeler.identity}, *dirs)
  warning = [line for line in self_judged if "Warning" in line]
  assert warning and warning[0].startswith("**") and "AI labeler of ai labels" in warning[0]
  assert "reward source of direct" in warning[0]


def _evaluation(workdir) -> str:
  """An eval.json of four policies where b and c tie (as the evaluate stage writes it)."""
  from rlaif_jax.evaluation import tables

  n, names = 40, ["a", "b", "c", "d"]
  gens = {
    p: [{"id": f"q{i}", "prompt": "x", "response": p, "length": 5, "ended": i < 10} for i in range(n)] for p in names
  }
  wins = {("a", "b"): 32, ("a", "c"): 32, ("a", "d"): 36, ("b", "c"): 20, ("b", "d"): 32, ("c", "d"): 32}
  judged = {pair: [{"p_a": 0.9 if i < k else 0.1} for i in range(n)] for pair, k in wins.items()}
  ev = {"policies": dict.fromkeys(names), "baseline": None, "prompts": n, "task": "t", "split": "test", "judge": "j"}
  ev |= {"judge_prompt": "p", "confidence": 0.95, "ties": "Half a win each", "winrates_png": str(workdir / "w.png")}
  ev |= {**tables.win_tables(gens, judged, names, None, 0.95), **tables.length_tables(gens, names, 0.95)}
  _write(str(workdir / "evaluate" / "eval.json"), ev | {"samples": {p: gens[p][:1] for p in names}})
  return str(workdir / "evaluate")


def test_pipeline_report_shows_intervals_shared_ranks_and_one_definitions_section(tmp_path):
  from rlaif_jax.labeling.report import write_report

  recs = [{"id": f"q{i}", "p_a": 0.9, "p1_ab": 0.9 - i / 10, "p1_ba": 0.2, "human_choice": i % 2} for i in range(6)]
  write_report(recs, str(tmp_path / "labels"), "t", {f"q{i}": (1, 2) for i in range(6)})
  human, ai = sps.binomtest(7, 12).proportion_ci(method="wilson"), sps.binomtest(4, 5).proportion_ci(method="wilson")
  rm = {"label_source": "ai", "train_pairs": 48, "eval_pairs": 17, "eval_accuracy_human": 7 / 12, "steps": 2}
  rm |= {"eval_accuracy_human_interval": [human.low, human.high], "eval_accuracy_ai": 0.8}
  _write(str(tmp_path / "rm" / "report.json"), rm | {"eval_accuracy_ai_interval": [ai.low, ai.high]})
  _write(str(tmp_path / "rl" / "summary.json"), {"iterations": 3, "explained_variance_last": 0.25})
  report_stage.run_report(
    str(tmp_path), label_dirs={"base": str(tmp_path / "labels")}, rm_dirs={"ai": str(tmp_path / "rm")},
    rl_dirs={"rlaif": str(tmp_path / "rl")}, eval_dir=_evaluation(tmp_path),
  )  # fmt: skip
  md = (tmp_path / "report.md").read_text()
  row = next(line for line in md.splitlines() if line.startswith("| base |"))
  cells = [c.strip() for c in row.strip("|").split("|")]

  def cell(k, n):  # scipy's Wilson interval, printed as the report prints it
    ci = sps.binomtest(k, n).proportion_ci(method="wilson")
    return f"{k / n:.3f} [{ci.low:.3f}, {ci.high:.3f}]"

  # order AB picks A on q0-q3 (p1_ab > 0.5): right on q0, q2 (humans A) and q5 (B); the same position wins in both
  # orders on q4, q5 (p1_ab, p1_ba <= 0.5); the AI always prefers A; humans and the shorter response (A) on q0, q2, q4
  assert cells[6:] == [cell(3, 6), cell(3, 6), cell(2, 6), cell(6, 6), cell(3, 6), cell(3, 6)]
  assert f"| 0.583 [{human.low:.3f}, {human.high:.3f}] |" in md and f"| 0.800 [{ai.low:.3f}, {ai.high:.3f}] |" in md
  assert "| reward - -> -, KL - | 0.250 |" in md
  assert "1. a (0.833), 2. b (0.500), 2. c (0.500), 4. d (0.167)" in md and "not separated" in md.lower()
  ended = sps.binomtest(10, 40).proportion_ci(method="wilson")
  assert f"| 0.25 [{ended.low:.2f}, {ended.high:.2f}] |" in md
  assert md.count("## Definitions") == 1
  definitions = md.split("\n## Definitions\n", 1)[1]
  for name in ("position bias", "prefer-shorter", "accuracy vs AI", "explained variance", "ranking:", "ended:"):
    assert f"\n- {name}" in definitions, name
  assert "harmless rate" not in definitions  # nothing the report does not show
