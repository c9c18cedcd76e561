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
  import tasks  # noqa: F401

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
