"""Evaluation math against scipy and hand computations; human sheets round trip; the judge."""

import csv
import json
import re
import statistics

import jax
import numpy as np
import pytest
from scipy import optimize
from scipy import stats as sps

from rlaif_jax import data, models
from rlaif_jax.evaluation import human, stats
from rlaif_jax.evaluation.tables import win_tables
from rlaif_jax.labeling import Labeler, harmless_prompt
from rlaif_jax.labeling.prompts import encode_parts


def test_win_indicators_by_hand():
  p = [0.9, 0.1, 0.5, 0.5000001, 0.50001, 0.4999]
  np.testing.assert_array_equal(stats.win_indicators(p), [1, 0, 0.5, 0.5, 1, 0])


@pytest.mark.parametrize("seed", range(5))
def test_wilson_interval_matches_scipy(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(1, 200))
  k = int(rng.integers(0, n + 1))
  for conf in (0.9, 0.95, 0.99):
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
    np.testing.assert_allclose(stats.wilson_interval(k, n, conf), (ci.low, ci.high), atol=1e-12)
  assert all(np.isnan(stats.wilson_interval(0, 0)))


def test_rate_with_interval_by_hand():
  # 3 of 4: phat 0.75, z 1.959964; centre (0.75 + z^2/8) / (1 + z^2/4), half z/(1+z^2/4) sqrt(0.75*0.25/4 + z^2/64)
  z = 1.959963984540054
  centre = (0.75 + z * z / 8) / (1 + z * z / 4)
  half = z / (1 + z * z / 4) * np.sqrt(0.75 * 0.25 / 4 + z * z / 64)
  out = stats.rate_with_interval([1, 1, 0, 1])
  assert out["rate"] == 0.75 and out["n"] == 4
  np.testing.assert_allclose([out["low"], out["high"]], [centre - half, centre + half], atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_welch_test_matches_scipy(seed):
  rng = np.random.default_rng(seed)
  a = rng.choice([0.0, 0.5, 1.0], size=int(rng.integers(5, 60)), p=[0.4, 0.1, 0.5])
  b = rng.choice([0.0, 0.5, 1.0], size=int(rng.integers(5, 60)), p=[0.6, 0.1, 0.3])
  ours = stats.welch_test(a, b)
  ref = sps.ttest_ind(a, b, equal_var=False)
  np.testing.assert_allclose([ours["t"], ours["p_value"]], [ref.statistic, ref.pvalue], rtol=1e-9)
  assert ours["diff"] == pytest.approx(a.mean() - b.mean())


def test_welch_test_constant_samples():
  assert stats.welch_test([1, 1, 1], [1, 1])["p_value"] == 1.0
  assert stats.welch_test([1, 1, 1], [0, 0])["p_value"] == 0.0
  with pytest.raises(ValueError, match="at least 2"):
    stats.welch_test([1], [0, 1])


def _penalized_nll(w, x, y, l2):
  z = x @ w
  return np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * w @ w


@pytest.mark.parametrize("seed", range(4))
def test_logistic_fit_matches_scipy_minimize_and_finite_difference_hessian(seed):
  rng = np.random.default_rng(seed)
  n = 80
  diff = rng.normal(0, 10, n)
  y = (rng.random(n) < 1 / (1 + np.exp(-(0.3 + 0.15 * diff)))).astype(float)
  y[rng.random(n) < 0.1] = 0.5  # ties
  x = np.stack([np.ones(n), diff / np.sqrt(np.mean(diff**2))], 1)
  w, cov = stats.fit_logistic(x, y, l2=1e-3)
  ref = optimize.minimize(_penalized_nll, np.zeros(2), args=(x, y, 1e-3), method="BFGS", options={"gtol": 1e-12})
  np.testing.assert_allclose(w, ref.x, atol=1e-5)
  # covariance = inverse Hessian of the summed penalized log loss, by central differences
  f = lambda v: n * _penalized_nll(v, x, y, 1e-3)  # noqa: E731
  h, eps = np.zeros((2, 2)), 1e-4
  for i in range(2):
    for j in range(2):
      e_i, e_j = np.eye(2)[i] * eps, np.eye(2)[j] * eps
      h[i, j] = (f(w + e_i + e_j) - f(w + e_i - e_j) - f(w - e_i + e_j) + f(w - e_i - e_j)) / (4 * eps * eps)
  np.testing.assert_allclose(cov, np.linalg.inv(h), rtol=1e-4)


def test_length_controlled_win_rate_reads_the_intercept():
  rng = np.random.default_rng(0)
  n = 400
  diff = rng.normal(0, 20, n)
  wins = (rng.random(n) < 1 / (1 + np.exp(-(0.0 + 0.2 * diff)))).astype(float)
  out = stats.length_controlled_win_rate(wins, diff)
  # a policy that wins only by being longer: the raw rate follows length, the controlled one is near 0.5
  assert abs(out["rate"] - 0.5) < 0.08 and out["low"] < 0.5 < out["high"]
  assert out["slope_per_token"] == pytest.approx(0.2, rel=0.3)
  # the other side of the same comparisons: 1 - rate, same interval mirrored
  other = stats.length_controlled_win_rate(1 - wins, -diff)
  assert other["rate"] == pytest.approx(1 - out["rate"], abs=1e-9)
  assert other["low"] == pytest.approx(1 - out["high"], abs=1e-9)
  # no length differences at all: the controlled rate is the raw rate (up to the tiny penalty)
  flat = stats.length_controlled_win_rate([1, 1, 1, 0, 0.5], [0, 0, 0, 0, 0])
  assert flat["rate"] == pytest.approx(0.7, abs=1e-3)


def test_rank_policies_and_win_tables():
  gens = {
    n: [{"length": L, "response": f"{n}{i}"} for i, L in enumerate(lengths)]
    for n, lengths in {"sft": [5, 6, 7, 8], "a": [9, 9, 9, 9], "b": [5, 5, 5, 5]}.items()
  }
  judged = {
    ("sft", "a"): [{"p_a": p} for p in (0.2, 0.3, 0.6, 0.1)],  # a wins 3 of 4
    ("sft", "b"): [{"p_a": p} for p in (0.5, 0.8, 0.7, 0.4)],  # b: tie, 0, 0, 1 -> 1.5 of 4
    ("a", "b"): [{"p_a": p} for p in (0.9, 0.9, 0.9, 0.1)],  # a wins 3 of 4
  }
  t = win_tables(gens, judged, ["sft", "a", "b"], "sft", 0.95)
  assert t["pairwise"]["a"]["sft"]["rate"] == 0.75 and t["pairwise"]["sft"]["a"]["rate"] == 0.25
  assert t["pairwise"]["b"]["sft"]["rate"] == 0.375 and t["pairwise"]["b"]["sft"]["ties"] == 1
  assert t["ranking"][0] == ("a", 0.75)  # (0.75 + 0.75) / 2
  assert [r[0] for r in t["ranking"]] == ["a", "sft", "b"]
  ref = sps.ttest_ind([1, 1, 0, 1], [0.5, 0, 0, 1], equal_var=False)
  assert t["tests"][0]["a"] == "a" and t["tests"][0]["p_value"] == pytest.approx(ref.pvalue)
  # a pair the judge could not fit (p_a None) is left out of that comparison and counted
  judged[("sft", "a")][1] = {"p_a": None}
  t = win_tables(gens, judged, ["sft", "a", "b"], "sft", 0.95)
  assert t["pairwise"]["a"]["sft"]["rate"] == pytest.approx(2 / 3) and t["pairwise"]["a"]["sft"]["n"] == 3
  assert t["pairwise"]["sft"]["a"]["not_judged"] == 1 and t["pairwise"]["a"]["b"]["not_judged"] == 0


def _judged(wins_of_first: dict, n: int) -> dict:
  """Judgments where the first policy of each pair wins k of n prompts (p 0.9, else 0.1)."""
  return {pair: [{"p_a": 0.9 if i < k else 0.1} for i in range(n)] for pair, k in wins_of_first.items()}


def test_tied_scores_share_a_rank_and_unseparated_neighbours_are_named():
  from rlaif_jax.evaluation import tables

  n, names = 40, ["a", "b", "c", "d"]
  gens = {p: [{"length": 5 + i % 3, "response": f"{p}{i}"} for i in range(n)] for p in names}
  wins = {("a", "b"): 32, ("a", "c"): 32, ("a", "d"): 36, ("b", "c"): 20, ("b", "d"): 32, ("c", "d"): 32}
  t = win_tables(gens, _judged(wins, n), names, None, 0.95)
  # mean win rates by hand: a (32+32+36)/120, b (8+20+32)/120, c (8+20+32)/120, d (4+8+8)/120
  assert [name for name, _ in t["ranking"]] == names
  np.testing.assert_allclose([s for _, s in t["ranking"]], [100 / 120, 0.5, 0.5, 20 / 120])
  assert t["ranks"] == {"a": 1, "b": 2, "c": 2, "d": 4}
  # neighbours whose head-to-head Wilson interval (scipy's) contains 0.5: only b and c (20 of 40)
  ci = {k: sps.binomtest(v, n).proportion_ci(method="wilson") for k, v in wins.items()}
  expected = [[x, y] for x, y in zip(names, names[1:]) if ci[(x, y)].low <= 0.5 <= ci[(x, y)].high]
  assert t["ranking_not_separated"] == expected == [["b", "c"]]
  text = "\n".join(tables.ranking_lines({**t, "confidence": 0.95}))
  assert "1. a (0.833), 2. b (0.500), 2. c (0.500), 4. d (0.167)" in text and "b and c" in text
  # equal to the printed 3 decimals is a tie, listed by name; a difference there is not
  assert stats.shared_ranks([("x", 0.61), ("c", 0.5204), ("b", 0.5201), ("a", 0.519)]) == [1, 2, 2, 4]
  assert [n for n, _ in stats.rank_policies({"c": {"b": 0.5204}, "b": {"c": 0.5201}})] == ["b", "c"]


def test_eval_md_defines_its_metrics_and_gives_the_ended_rate_an_interval(tmp_path):
  from rlaif_jax.evaluation import tables

  ended = {"sft": [1, 1, 1, 0], "a": [0, 0, 0, 0], "b": [1, 1, 1, 1]}
  gens = {
    n: [{"length": 5 + i, "response": f"{n}{i}", "ended": bool(e)} for i, e in enumerate(v)] for n, v in ended.items()
  }
  judged = _judged({("sft", "a"): 1, ("sft", "b"): 3, ("a", "b"): 2}, 4)
  names = list(gens)
  result = {"policies": dict.fromkeys(names), "baseline": "sft", "prompts": 4, "task": "t", "split": "test"}
  result |= {"judge": "j", "judge_prompt": "p", "confidence": 0.95, "ties": "Half a win each"}
  result |= {**win_tables(gens, judged, names, "sft", 0.95), **tables.length_tables(gens, names, 0.95)}
  tables.write_outputs(result, str(tmp_path))
  saved = json.load(open(tmp_path / "eval.json"))
  for n, e in ended.items():
    ci = sps.binomtest(sum(e), len(e)).proportion_ci(method="wilson")
    assert saved["ended"][n] == np.mean(e)
    np.testing.assert_allclose(saved["ended_interval"][n], [ci.low, ci.high], atol=1e-12)
  md = (tmp_path / "eval.md").read_text()
  ci = sps.binomtest(3, 4).proportion_ci(method="wilson")
  assert f"| 0.75 [{ci.low:.2f}, {ci.high:.2f}] |" in md  # sft ended 3 of 4
  definitions = md.split("## Definitions\n", 1)[1]
  assert md.count("## Definitions") == 1
  for name in ("win rate:", "[low, high]: the 95% Wilson", "length-controlled win rate (LC):", "ranking:", "ended:"):
    assert f"\n- {name}" in definitions, name
  assert "harmless rate:" not in definitions  # only what the report shows


def _rater(path, out_path, k):
  """A simulated rater: ranks the responses of each row by the quality written in them."""
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    quality = [int(re.search(r"q=(\d+)", r[f"response_{j + 1}"]).group(1)) for j in range(k)]
    order = np.argsort(-np.asarray(quality), kind="stable")
    for rank, j in enumerate(order):
      r[f"rank_{j + 1}"] = str(rank + 1)
  with open(out_path, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def test_human_sheets_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  policies = ["sft", "rlaif", "rlhf"]
  items, expected = [], {}
  for i in range(30):
    q = {p: int(v) for p, v in zip(policies, rng.permutation(3))}
    items.append({"id": f"x{i}", "prompt": f"post {i}", "responses": {p: f"{p} says q={q[p]}" for p in policies}})
    expected[f"x{i}"] = q
  info = human.export_sheets(items, policies, str(tmp_path), seed=3)
  assert info["items"] == 30
  sheet = open(tmp_path / "sheet.csv", encoding="utf-8").read()
  assert not any(p in sheet.split("\n")[0] for p in policies)  # the header names no policy
  key = json.load(open(tmp_path / "key.json"))
  shown = [tuple(v["policies"]) for v in key["items"].values()]
  assert len(set(shown)) > 1  # response order is randomized per item
  assert [v["id"] for v in key["items"].values()] != [f"x{i}" for i in range(30)]  # item order too
  page = open(tmp_path / "sheet.html", encoding="utf-8").read()
  assert page.count("<section>") == 30 and "download" in page and "sft says" in page
  _rater(tmp_path / "sheet.csv", tmp_path / "filled.csv", 3)
  result = human.import_rankings(str(tmp_path / "filled.csv"), str(tmp_path / "key.json"))
  for a in policies:
    for b in policies:
      if a != b:
        want = np.mean([expected[i][a] > expected[i][b] for i in expected])
        assert result["pairwise"][a][b]["rate"] == pytest.approx(want)
        assert result["pairwise"][a][b]["n"] == 30
  # the HTML page's download has only item and rank columns; it imports the same
  with open(tmp_path / "filled.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  with open(tmp_path / "answers.csv", "w", encoding="utf-8") as f:
    f.write(
      "item,rank_1,rank_2,rank_3\n" + "".join(f"{r['item']},{r['rank_1']},{r['rank_2']},{r['rank_3']}\n" for r in rows)
    )
  again = human.import_rankings(str(tmp_path / "answers.csv"), str(tmp_path / "key.json"))
  assert again["pairwise"] == result["pairwise"]


def test_human_import_errors_name_file_line_and_field(tmp_path):
  items = [{"id": f"x{i}", "prompt": "p", "responses": {"a": "1", "b": "2"}} for i in range(3)]
  human.export_sheets(items, ["a", "b"], str(tmp_path))
  key = str(tmp_path / "key.json")
  bad = tmp_path / "bad.csv"
  bad.write_text("item,rank_1,rank_2\nitem-0001,1,2\nitem-0002,1,1\n")
  with pytest.raises(ValueError, match=r"bad.csv:3: ranks \[1, 1\] must use each of 1..2 exactly once"):
    human.import_rankings(str(bad), key)
  bad.write_text("item,rank_1,rank_2\nitem-0001,first,2\n")
  with pytest.raises(ValueError, match=r"bad.csv:2: field rank_1: expected a rank 1..2, got 'first'"):
    human.import_rankings(str(bad), key)
  bad.write_text("item,rank_1,rank_2\nitem-9999,1,2\n")
  with pytest.raises(ValueError, match=r"bad.csv:2: field item: 'item-9999' is not in the key file"):
    human.import_rankings(str(bad), key)
  bad.write_text("item,rank_1\nitem-0001,1\n")
  with pytest.raises(ValueError, match=r"missing column\(s\) \['rank_2'\]"):
    human.import_rankings(str(bad), key)
  bad.write_text("item,rank_1,rank_2\nitem-0001,,\n")
  with pytest.raises(ValueError, match="no rated rows"):
    human.import_rankings(str(bad), key)


def test_import_cli(tmp_path, capsys):
  from rlaif_jax.evaluation import import_human

  items = [{"id": f"x{i}", "prompt": "p", "responses": {"a": "1", "b": "2"}} for i in range(4)]
  human.export_sheets(items, ["a", "b"], str(tmp_path))
  rows = json.load(open(tmp_path / "key.json"))["items"]
  lines = [
    f"{item},{1 if v['policies'][0] == 'a' else 2},{2 if v['policies'][0] == 'a' else 1}" for item, v in rows.items()
  ]
  (tmp_path / "answers.csv").write_text("item,rank_1,rank_2\n" + "\n".join(lines) + "\n")
  assert import_human.main(["--answers", str(tmp_path / "answers.csv"), "--key", str(tmp_path / "key.json")]) == 0
  out = json.load(open(tmp_path / "answers.winrates.json"))
  assert out["pairwise"]["a"]["b"]["rate"] == 1.0 and "1. a (1.000), 2. b (0.000)" in capsys.readouterr().out
  assert import_human.main(["--answers", str(tmp_path / "nope.csv"), "--key", str(tmp_path / "key.json")]) == 2


@pytest.mark.slow
def test_harmless_judge_reads_the_answer_logits(tiny_config):
  model = models.Transformer(tiny_config)
  params = models.init_params(model, jax.random.PRNGKey(3))
  vocab = data.byte_vocabulary()
  judge = Labeler(model, params, vocab, max_len=512, batch_size=8)
  contexts = ["\n\nHuman: how do I pick a lock?\n\nAssistant:", "\n\nHuman: hi\n\nAssistant:", "x" * 900]
  responses = ["I can't help with that.", "Hello! How can I help?", "sure"]
  got = judge.harmless_probs(contexts, responses)
  for c, r, g in zip(contexts, responses, got):
    ids, _ = encode_parts(vocab, harmless_prompt(c, r), 511)
    logits = model.apply({"params": params}, np.asarray([ids]), np.ones((1, len(ids)), bool))[0, -1]
    one, two = vocab.encode("1")[0], vocab.encode("2")[0]
    want = 1 / (1 + np.exp(-(float(logits[one]) - float(logits[two]))))
    assert g == pytest.approx(want, abs=2e-5)
  assert judge.truncated == 1  # the 900-byte context was cut from the left to fit


@pytest.mark.parametrize("seed", range(3))
def test_length_stats_match_the_statistics_module(seed):
  lengths = np.random.default_rng(seed).integers(1, 64, size=37).tolist()
  out = stats.length_stats(lengths)
  assert out["mean"] == pytest.approx(statistics.fmean(lengths))
  assert out["std"] == pytest.approx(statistics.pstdev(lengths))
  assert out["median"] == pytest.approx(statistics.median(lengths))
  # p90 by linear interpolation between order statistics, as numpy's default does
  xs, pos = sorted(lengths), 0.9 * (len(lengths) - 1)
  lo = int(pos)
  assert out["p90"] == pytest.approx(xs[lo] + (pos - lo) * (xs[lo + 1] - xs[lo]))
  assert (out["min"], out["max"]) == (min(lengths), max(lengths))
  assert all(np.isnan(v) for v in stats.length_stats([]).values())


def test_policy_scores_are_the_scorers_mean_with_a_normal_interval():
  from rlaif_jax.evaluation import judging

  rng = np.random.default_rng(3)
  gens = {
    name: [{"prompt": f"p{i}", "response": "x" * int(n)} for i, n in enumerate(rng.integers(0, 30, size=size))]
    for name, size in (("a", 17), ("b", 40))
  }
  length = lambda inputs, responses: np.asarray([len(r) for r in responses], np.float32)  # noqa: E731
  out = judging.policy_scores(length, gens, 0.9)
  for name, rows in gens.items():
    r = np.asarray([len(x["response"]) for x in rows], float)
    half = sps.norm.ppf(0.95) * r.std(ddof=1) / np.sqrt(len(r))
    assert out[name]["n"] == len(r)
    np.testing.assert_allclose(
      [out[name]["mean"], out[name]["low"], out[name]["high"], out[name]["std"]],
      [r.mean(), r.mean() - half, r.mean() + half, r.std(ddof=1)],
      rtol=1e-6,
    )


def test_generations_and_judgments_are_reused_only_with_the_same_settings(tmp_path):
  from sft_helpers import one_device_mesh

  from rlaif_jax import generation, records, sampling
  from rlaif_jax.evaluation import judging

  policy = models.ModelSource(config=models.tiny(num_layers=1))
  prompts = [{"id": f"q{i}", "prompt": f"Question {i}:"} for i in range(2)]
  where = str(tmp_path / "generations")

  def generate(temperature):
    config = sampling.SamplingConfig(max_new_tokens=4, temperature=temperature)
    sets = {where: (prompts, generation.StopRule())}
    return judging.generate_all(policy, {"sft": None}, sets, config, 16, 2, one_device_mesh(), 0)[where]["sft"]

  first = generate(0.0)
  stamp = (tmp_path / "generations" / "sft.jsonl").stat().st_mtime_ns
  assert generate(0.0) == first and (tmp_path / "generations" / "sft.jsonl").stat().st_mtime_ns == stamp  # reused
  with pytest.raises(records.RecordsError, match=r"sft.jsonl: 2 of its 2 records were made with other settings .*"
                     r"\(sampling.temperature: 0.0 -> 1.0\)"):  # fmt: skip
    generate(1.0)

  class Judge:
    calls = 0

    def harmless_probs(self, contexts, responses):
      self.calls += 1
      return [0.9] * len(contexts)

  judge = Judge()
  for _ in range(2):
    rates = judging.harmless_rates(judge, {"sft": first}, 0.95, str(tmp_path / "harmless"), {"judge": "a"})
  assert judge.calls == 1 and rates["sft"]["mean_p"] == pytest.approx(0.9)
  with pytest.raises(records.RecordsError, match=r"sft.judged.jsonl: .*judge: 'a' -> 'b'"):
    judging.harmless_rates(judge, {"sft": first}, 0.95, str(tmp_path / "harmless"), {"judge": "b"})
