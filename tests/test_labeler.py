import json
import os

import jax
import numpy as np
import pytest
from conftest import randomize

from rlaif_jax import data, models, partitioning
from rlaif_jax.labeling import Exemplar, Labeler, PromptConfig, pair_prompt, resolve_answers
from rlaif_jax.labeling import prompts as P
from rlaif_jax.stages import label as label_stage

PAIRS = [
  {
    "id": f"p{i}",
    "inputs": f"\n\nHuman: question {i}?\n\nAssistant:",
    "response_a": f"answer a{i}",
    "response_b": f"reply b{i}",
    "human_choice": i % 2,
  }
  for i in range(6)
]
SHORT = PromptConfig(task="helpfulness", custom_preamble="Pick one.")


@pytest.fixture(scope="module")
def labeler():
  model = models.Transformer(models.tiny())
  params = randomize(models.init_params(model, jax.random.PRNGKey(0)))
  return Labeler(model, params, data.byte_vocabulary(), max_len=512, batch_size=8, length_bucket=32)


def test_answer_logits_equal_slicing_the_full_logits(labeler):
  vocab = labeler.vocab
  prompts = [list(vocab.encode(p["inputs"] + " Preferred Response=")) for p in PAIRS]
  answers = resolve_answers(vocab, ("1", "2"), "Preferred Response=", 264)
  got = labeler.answer_scores(prompts, answers)
  for prompt, row in zip(prompts, got):
    full = labeler.model.apply({"params": labeler.params}, np.asarray([prompt]))[0, -1]
    np.testing.assert_allclose(row, np.asarray(full)[[a[0] for a in answers.ids]], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_prompts_are_batched_by_length_and_scores_come_back_in_order(labeler):
  """Prompts of like length share a batch (little padding); each score is still its own prompt's
  last-position logits, in the order given."""
  vocab = labeler.vocab
  mesh = partitioning.make_mesh({"data": 2}, jax.devices()[:2])
  small = Labeler(labeler.model, labeler.params, vocab, max_len=512, batch_size=2, length_bucket=32, mesh=mesh)
  rng = np.random.default_rng(0)
  lengths = [5, 200, 7, 190, 9, 180, 100]
  prompts = [rng.integers(3, 259, size=n).tolist() for n in lengths]
  answers = resolve_answers(vocab, ("1", "2"), "Preferred Response=", 264)
  shapes = []
  real = small._last_logits
  small._last_logits = lambda params, toks, mask, **kw: shapes.append(toks.shape) or real(params, toks, mask, **kw)
  got = small.answer_scores(prompts, answers)
  for prompt, row in zip(prompts, got):
    full = small.model.apply({"params": small.params}, np.asarray([prompt]))[0, -1]
    np.testing.assert_allclose(row, np.asarray(full)[[a[0] for a in answers.ids]], rtol=1e-4, atol=1e-4)
  # sorted: (5, 7) -> 32, (9, 100) -> 128, (180, 190) -> 192, (200) -> 224; in the given order
  # every batch but the last would be padded to 224 or 192
  assert sorted(shape[1] for shape in shapes) == [32, 128, 192, 224]


@pytest.mark.slow
def test_a_prefix_every_prompt_shares_is_computed_once_with_the_same_scores(labeler):
  """Prompts that start with the same 40 tokens (longer than the tiny model's 16-token local
  window) and go on for 1 to 60 tokens of their own: the prefix's keys and values are computed
  once, and every answer logit is still its whole prompt's last-position logit, on a sharded mesh."""
  vocab = labeler.vocab
  mesh = partitioning.make_mesh({"data": 2}, jax.devices()[:2])
  shared = Labeler(labeler.model, labeler.params, vocab, max_len=512, batch_size=4, length_bucket=16, mesh=mesh)
  rng = np.random.default_rng(5)
  prefix = rng.integers(3, 259, size=40).tolist()
  prompts = [prefix + rng.integers(3, 259, size=n).tolist() for n in rng.integers(1, 61, size=12)]  # 3 batches
  answers = resolve_answers(vocab, ("1", "2"), "Preferred Response=", 264)
  calls = []
  real = shared._prefix_cache
  shared._prefix_cache = lambda params, p: calls.append(p.shape) or real(params, p)
  got = shared.answer_scores(prompts, answers)
  assert calls == [(4, 40)]
  whole = Labeler(labeler.model, labeler.params, vocab, max_len=512, batch_size=4, mesh=mesh, share_prefix=0)
  np.testing.assert_allclose(got, whole.answer_scores(prompts, answers), rtol=1e-4, atol=1e-4)  # each prompt whole
  full = shared.model.apply({"params": shared.params}, np.asarray(prompts[:1]))[0, -1]
  np.testing.assert_allclose(got[0], np.asarray(full)[[a[0] for a in answers.ids]], rtol=1e-4, atol=1e-4)
  config = PromptConfig(task="helpfulness", preamble="detailed")  # the real preamble: shared by every prompt
  calls.clear()
  shared.batch_size = 2  # 4 pairs: 2 batches of each order's prompts, below SHARE_MIN_BATCHES
  plain = [r["p_a"] for r in shared.label_pairs(PAIRS[:4], config)]
  assert calls == [] and shared._shared_prefix([prefix + [5]] * 6) == 40
  shared.SHARE_MIN_BATCHES = 2
  np.testing.assert_allclose([r["p_a"] for r in shared.label_pairs(PAIRS[:4], config)], plain, atol=1e-5)
  assert len(calls) == 2 and calls[0][1] > 32  # once per order: the detailed preamble
  assert shared._shared_prefix([prefix[:20] + [5]] * 6) == 0


@pytest.mark.slow
def test_multi_token_answers_score_by_sequence_log_probability(labeler):
  vocab = labeler.vocab
  answers = resolve_answers(vocab, [str(i) for i in range(1, 11)], "Score (1-10)=", 264)
  assert not answers.single_token and answers.ids[9] == (52, 51)  # "10" is two bytes
  prompts = [list(vocab.encode(f"rate {i} Score (1-10)=")) for i in range(3)]
  got = labeler.answer_scores(prompts, answers)
  for prompt, row in zip(prompts, got):
    for c, ans in enumerate(answers.ids):
      seq = np.asarray([prompt + list(ans)])
      logp = jax.nn.log_softmax(labeler.model.apply({"params": labeler.params}, seq)[0], -1)
      expected = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(ans))
      assert row[c] == pytest.approx(expected, abs=2e-3)


def test_both_orders_swap_the_responses_in_the_prompt(labeler):
  (rec,) = labeler.label_pairs(PAIRS[:1], SHORT, return_prompts=True)
  ab, ba = rec["prompts"]["ab"], rec["prompts"]["ba"]
  assert "Response 1 - answer a0\nResponse 2 - reply b0" in ab
  assert "Response 1 - reply b0\nResponse 2 - answer a0" in ba
  assert ab.endswith("Preferred Response=") and ab.startswith("Pick one.\n\nConversation - \n\nHuman: question 0?")
  assert rec["p_a"] == pytest.approx((rec["p1_ab"] + 1 - rec["p1_ba"]) / 2)
  one = labeler.label_pairs(PAIRS[:1], PromptConfig(task="helpfulness", custom_preamble="Pick one.", both_orders=False))
  assert one[0]["p1_ba"] is None and one[0]["p_a"] == pytest.approx(rec["p1_ab"], abs=1e-6)


class Spy:
  """Wraps a labeler's generate and answer_scores to count calls and fix the rationales."""

  def __init__(self, labeler, monkeypatch):
    self.generate_calls, self.score_calls, self.labeler = [], [], labeler
    real_scores = labeler.answer_scores

    def generate(prompt_ids, temperature, max_new, seed):
      self.generate_calls.append((len(prompt_ids), temperature, seed))
      return [f"because reason {seed % 1000} for item {i}" for i in range(len(prompt_ids))]

    def answer_scores(prompt_ids, answers):
      self.score_calls.append([labeler.vocab.decode(p) for p in prompt_ids])
      return real_scores(prompt_ids, answers)

    monkeypatch.setattr(labeler, "generate", generate)
    monkeypatch.setattr(labeler, "answer_scores", answer_scores)


def test_chain_of_thought_runs_two_inferences_with_the_rationale(labeler, monkeypatch):
  spy = Spy(labeler, monkeypatch)
  config = PromptConfig(task="helpfulness", custom_preamble="Pick one.", chain_of_thought=True)
  (rec,) = labeler.label_pairs(PAIRS[:1], config, return_prompts=True)
  assert len(spy.generate_calls) == 2 and len(spy.score_calls) == 2  # per order: decode, then score
  assert spy.generate_calls[0][1] == 0.0  # greedy by default
  final = rec["prompts"]["ab"]
  assert f"{P.COT_REQUESTS['helpfulness']} because reason 0 for item 0\nPreferred Response=" in final
  assert rec["rationales"]["ab"] == ["because reason 0 for item 0"]
  assert spy.score_calls[0][0] == final


def test_self_consistency_averages_the_distributions(labeler, monkeypatch):
  config = PromptConfig(
    task="helpfulness", custom_preamble="Pick one.", chain_of_thought=True, self_consistency=3, cot_temperature=0.7
  )
  spy = Spy(labeler, monkeypatch)
  recs = labeler.label_pairs(PAIRS[:2], config)
  assert len(spy.generate_calls) == 6 and {c[1] for c in spy.generate_calls} == {0.7}
  assert len(set(recs[0]["rationales"]["ab"])) == 3
  # Score each sampled rationale's prompt alone: p1_ab is the mean of the three P("1").
  answers = resolve_answers(labeler.vocab, ("1", "2"), "Preferred Response=", 264)
  parts = pair_prompt(config, PAIRS[0]["inputs"], PAIRS[0]["response_a"], PAIRS[0]["response_b"], cot=True)
  probs = []
  for r in recs[0]["rationales"]["ab"]:
    ids = labeler.encode(P.with_rationale(parts, r, "helpfulness"), 1)
    s = labeler.answer_scores([ids], answers)[0]
    probs.append(1 / (1 + np.exp(s[1] - s[0])))
  assert recs[0]["p1_ab"] == pytest.approx(np.mean(probs), abs=1e-5)
  assert np.std(probs) > 0  # the samples really differ


def test_few_shot_exemplars_appear_in_order_and_never_the_current_pair():
  exemplars = [Exemplar(f"ctx {i}", f"one {i}", f"two {i}", 1 + i % 2, f"why {i}") for i in range(4)]
  config = PromptConfig(task="helpfulness", num_exemplars=2, exemplar_rationales=True)
  text = pair_prompt(config, "ctx 0", "x", "y", exemplars).text  # exemplar 0 is this very input
  assert "ctx 0\nResponse 1 - one 0" not in text
  i1, i2, i3 = text.index("ctx 1"), text.index("ctx 2"), text.index("Conversation - ctx 0")
  assert i1 < i2 < i3 and "ctx 3" not in text
  assert "Rationale: why 1\nPreferred Response=2\n\n" in text
  assert text.startswith(P.PREAMBLES[("helpfulness", "detailed")])
  with pytest.raises(ValueError, match="asked for 5 exemplars"):
    pair_prompt(config.__class__(task="helpfulness", num_exemplars=5), "c", "x", "y", exemplars)


def test_overlong_prompts_are_cut_in_the_context_only():
  vocab = data.byte_vocabulary()
  parts = P.pair_prompt(SHORT, "start " + "x" * 500 + " end of context", "resp one", "resp two")
  ids, cut = P.encode_parts(vocab, parts, 120)
  text = vocab.decode(ids)
  assert cut and len(ids) == 120
  assert text.startswith("Pick one.\n\nConversation - ") and "start" not in text
  assert text.endswith("end of context\nResponse 1 - resp one\nResponse 2 - resp two\n\nPreferred Response=")
  with pytest.raises(ValueError, match="needs .* tokens without its context"):
    P.encode_parts(vocab, parts, 40)


def test_unspellable_answers_fail_clearly():
  class NoDigits:
    unk_id = 2

    def encode(self, s):
      return [2 if ch.isdigit() else 10 for ch in s]

    def decode(self, ids):
      return "?" * len(ids)

  with pytest.raises(ValueError, match="cannot spell the answer '1'"):
    resolve_answers(NoDigits(), ("1", "2"), "Preferred Summary=", 100)


def _write_candidates(path, n=10):
  rows = [
    {
      "id": f"c{i}",
      "input": f"\n\nHuman: q{i}\n\nAssistant:",
      "response_a": f"a{i}",
      "response_b": f"bb{i}",
      "human_choice": i % 2,
    }
    for i in range(n)
  ]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_file(tmp_path, monkeypatch):
  cands = _write_candidates(tmp_path / "c.jsonl")
  kwargs = dict(
    labeler=models.ModelSource(config=models.tiny()),
    task=None,
    candidates_file=cands,
    prompt_config=SHORT,
    max_len=128,
    batch_size=4,
    chunk_size=4,
    mesh_shape={"data": 2},
  )
  whole = label_stage.run_label(str(tmp_path / "whole"), **kwargs)
  assert whole["pairs"] == 10 and whole["pairs_with_human_labels"] == 10
  for name in ("report.md", "report.json", "calibration.png"):
    assert os.path.exists(tmp_path / "whole" / name)

  calls = {"n": 0}
  real = Labeler.label_pairs

  def dies_on_second_chunk(self, *a, **k):
    calls["n"] += 1
    if calls["n"] == 2:
      raise KeyboardInterrupt("killed")
    return real(self, *a, **k)

  monkeypatch.setattr(Labeler, "label_pairs", dies_on_second_chunk)
  with pytest.raises(KeyboardInterrupt):
    label_stage.run_label(str(tmp_path / "resumed"), **kwargs)
  monkeypatch.setattr(Labeler, "label_pairs", real)
  out = tmp_path / "resumed" / "labels.jsonl"
  assert len(out.read_text().splitlines()) == 4
  with open(out, "a") as f:
    f.write('{"id": "c4", "p_a": 0.')  # a line torn by the kill
  resumed = label_stage.run_label(str(tmp_path / "resumed"), **kwargs)
  assert resumed["newly_labeled"] == 6
  assert out.read_text() == (tmp_path / "whole" / "labels.jsonl").read_text()
  again = label_stage.run_label(str(tmp_path / "resumed"), **kwargs)
  assert again["newly_labeled"] == 0 and out.read_text() == (tmp_path / "whole" / "labels.jsonl").read_text()


@pytest.mark.slow
def test_labeler_runs_sharded_like_one_device():
  model = models.Transformer(models.tiny())
  params = randomize(models.init_params(model, jax.random.PRNGKey(0)))
  vocab = data.byte_vocabulary()
  one = Labeler(
    model, params, vocab, max_len=256, batch_size=8, mesh=partitioning.make_mesh({"data": 1}, jax.devices()[:1])
  )
  many = Labeler(model, params, vocab, max_len=256, batch_size=8, mesh=partitioning.make_mesh({"data": 2, "tensor": 4}))
  a, b = one.label_pairs(PAIRS, SHORT), many.label_pairs(PAIRS, SHORT)
  np.testing.assert_allclose([r["p_a"] for r in a], [r["p_a"] for r in b], atol=1e-5)
  np.testing.assert_allclose(
    one.direct_scores("helpfulness", ["q"] * 3, ["x", "y", "z"]),
    many.direct_scores("helpfulness", ["q"] * 3, ["x", "y", "z"]),
    atol=1e-5,
  )


def _marker_pairs(n, seed):
  """Pairs where the preferred reply contains GOOD; the order is random."""
  import random

  rng = random.Random(seed)
  word = lambda: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))  # noqa: E731
  pairs = []
  for i in range(n):
    good, bad, choice = f"{word()} GOOD {word()}", f"{word()} {word()}", rng.randint(0, 1)
    a, b = (good, bad) if choice == 0 else (bad, good)
    pairs.append(
      {"id": f"s{seed}-{i}", "inputs": f"Q{i % 7}", "response_a": a, "response_b": b, "human_choice": choice}
    )
  return pairs


@pytest.mark.slow
def test_a_labeler_trained_to_prefer_a_marker_aligns_with_it():
  """Fine-tune a tiny model on labeling prompts (both orders), then label held-out pairs
  through the Labeler: the whole path carries the signal."""
  import functools

  from rlaif_jax import optimizers, trainer
  from rlaif_jax.labeling.report import alignment_report
  from rlaif_jax.sft import SFTObjective

  config = PromptConfig(task="helpfulness", custom_preamble="Which reply says GOOD?")
  vocab = data.byte_vocabulary()
  examples = []
  for p in _marker_pairs(256, seed=0):
    a_wins = p["human_choice"] == 0
    for first, second, answer in (
      (p["response_a"], p["response_b"], "1" if a_wins else "2"),
      (p["response_b"], p["response_a"], "2" if a_wins else "1"),
    ):
      prompt = pair_prompt(config, p["inputs"], first, second).text
      examples.append({"inputs": np.asarray(vocab.encode(prompt)), "targets": np.asarray(vocab.encode(answer))})
  arrays, stats = data.sft_features(examples, 160, min_context=8)
  assert stats["truncated_inputs"] == 0
  model = models.Transformer(models.tiny())
  mesh = partitioning.make_mesh({"data": -1})
  t = trainer.Trainer(
    SFTObjective(model).loss_fn, functools.partial(models.init_params, model, boxed=True), optimizers.adamw(3e-3), mesh
  )
  rng = jax.random.PRNGKey(0)
  state = t.init_state(rng)
  batches = data.ArrayDataset(arrays, 32, seed=0)
  for step in range(60):
    state, _ = t.step(state, batches.batch(step), rng)
  labeler = Labeler(model, state.params, vocab, max_len=160, batch_size=16, mesh=mesh)
  report = alignment_report(labeler.label_pairs(_marker_pairs(64, seed=1), config))
  assert report["alignment"] >= 0.95, report
  assert report["position_bias"] <= 0.1 and report["mean_confidence"] > 0.9, report


def test_pairs_too_long_for_the_labeler_are_recorded_not_dropped(labeler):
  pairs = [PAIRS[0], {**PAIRS[1], "id": "long", "response_a": "x" * 2000}, PAIRS[2]]
  recs = labeler.label_pairs(pairs, SHORT)
  assert [r["id"] for r in recs] == ["p0", "long", "p2"]
  assert recs[1]["p_a"] is None and "without its context" in recs[1]["error"]
  assert recs[0]["p_a"] == pytest.approx(labeler.label_pairs(PAIRS[:1], SHORT)[0]["p_a"], abs=1e-6)
  from rlaif_jax.labeling.report import alignment_report

  report = alignment_report(recs)
  assert report["not_labeled"] == 1 and report["pairs_with_human_labels"] == 2


def test_direct_scores_are_the_expected_rating_mapped_to_minus_one_one(labeler):
  contexts, responses = ["\n\nHuman: hi\n\nAssistant:"] * 2, ["hello there", "go away"]
  got = labeler.direct_scores("helpfulness", contexts, responses)
  answers = resolve_answers(labeler.vocab, [str(i) for i in range(1, 11)], "Score (1-10)=", 264)
  ids = [labeler.encode(P.direct_prompt("helpfulness", c, r), 2) for c, r in zip(contexts, responses)]
  logp = labeler.answer_scores(ids, answers, complete=True).astype(np.float64)
  probs = np.exp(logp - logp.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(got, (probs @ np.arange(1, 11) - 5.5) / 4.5, atol=1e-5)
  assert np.all(np.abs(got) <= 1)


def test_length_baselines_by_hand():
  from rlaif_jax.labeling.report import length_baselines

  records = [
    {"id": "a", "human_choice": 0},  # A shorter, humans chose A: "shorter" right
    {"id": "b", "human_choice": 0},  # A longer, humans chose A: "longer" right
    {"id": "c", "human_choice": 1},  # B shorter, humans chose B: "shorter" right
    {"id": "d", "human_choice": 1},  # equal lengths: left out
    {"id": "e", "human_choice": -1},  # no human label: left out
  ]
  lengths = {"a": (3, 9), "b": (9, 3), "c": (9, 2), "d": (4, 4), "e": (1, 2)}
  got = length_baselines(records, lengths)
  # Wilson 95% intervals of 2 of 3 and 1 of 3, by hand: centre (k/n + z^2/2n) / (1 + z^2/n),
  # half-width z / (1 + z^2/n) sqrt(k/n (1 - k/n) / n + z^2 / 4n^2)
  z, n = 1.959963984540054, 3
  centre = lambda k: (k / n + z * z / (2 * n)) / (1 + z * z / n)  # noqa: E731
  half = lambda k: z / (1 + z * z / n) * np.sqrt(k / n * (1 - k / n) / n + z * z / (4 * n * n))  # noqa: E731
  assert got["baseline_pairs"] == 3
  assert got["baseline_prefer_shorter"] == pytest.approx(2 / 3) and got["baseline_prefer_longer"] == pytest.approx(
    1 / 3
  )
  assert got["baseline_prefer_shorter_interval"] == pytest.approx([centre(2) - half(2), centre(2) + half(2)])
  assert got["baseline_prefer_longer_interval"] == pytest.approx([centre(1) - half(1), centre(1) + half(1)])


def bigram_labeler(next_token: dict[str, str], strength: float = 4.0) -> Labeler:
  """A byte-vocabulary Labeler whose model is hand-set to a bigram table: after the character c
  it is sure (logit about 8 x strength above the rest) of next_token[c], whatever came before.

  Attention and all but the last MLP write nothing; the used characters get orthogonal
  embeddings (one axis each), the others zero; the last MLP has one unit per rule, firing on
  its character and writing the next character's axis, amplified past the residual."""
  vocab = data.byte_vocabulary()
  cfg = models.tiny(num_layers=1)
  model = models.Transformer(cfg)
  params = jax.tree_util.tree_map(np.zeros_like, models.init_params(model, jax.random.PRNGKey(0)))
  params = jax.tree_util.tree_map(np.array, params)
  chars = sorted(set(next_token) | set(next_token.values()))
  ids = [vocab.encode(c)[0] for c in chars]
  axis = {c: i for i, c in enumerate(chars)}
  assert len(chars) <= cfg.embed_dim and len(next_token) <= cfg.hidden_dim
  for c, i in zip(chars, ids):
    params["embedder"]["embedding"][i, axis[c]] = strength
  mlp = params["blocks_0"]["mlp"]
  for unit, (c, nxt) in enumerate(next_token.items()):
    mlp["gate"][axis[c], unit] = mlp["up"][axis[c], unit] = 1.0
    mlp["down"][unit, axis[nxt]] = 1.0
  params["blocks_0"]["post_ffw_norm"]["scale"][:] = 100.0  # the MLP's write outweighs the residual
  return Labeler(model, params, vocab, max_len=256, batch_size=8, length_bucket=32)


def _sure_of(score: int) -> dict[str, str]:
  """Bigram rules of a model sure that "Score (1-10)=" is followed by `score` and then a newline."""
  digits = str(score)
  rules = {"=": digits[0], digits[-1]: "\n"}
  if len(digits) == 2:
    rules[digits[0]] = digits[1]
  return rules


def test_bigram_labeler_is_sure_of_what_its_table_says():
  labeler = bigram_labeler(_sure_of(10))
  vocab = labeler.vocab
  seq = np.asarray([vocab.encode("Score (1-10)=10")])
  probs = np.asarray(jax.nn.softmax(labeler.model.apply({"params": labeler.params}, seq)[0], -1))
  assert probs[-3, vocab.encode("1")[0]] > 0.99  # after "="
  assert probs[-2, vocab.encode("0")[0]] > 0.99  # after "1"
  assert probs[-1, vocab.encode("\n")[0]] > 0.99  # after "0"


@pytest.mark.parametrize("score", range(1, 11))
def test_a_model_sure_of_a_score_gets_it_as_the_direct_score(score):
  """Complete answers: a model sure of "10" (bytes spell it "1" "0") must get r near +1, not the
  0 that summing log P("1") and log P("1" "0") gives (both near 0); the map is monotone."""
  labeler = bigram_labeler(_sure_of(score))
  got = labeler.direct_scores("helpfulness", ["\n\nHuman: rate me\n\nAssistant:"] * 2, ["fine", "a reply"])
  np.testing.assert_allclose(got, [(score - 5.5) / 4.5] * 2, atol=0.01)


def test_complete_answer_scores_against_a_numpy_reference(labeler):
  """Random model: each answer's complete-answer log-probability, recomputed from full logits in
  numpy: sum of its tokens' log-probs plus log(1 - P(next token starts with a digit))."""
  vocab = labeler.vocab
  answers = resolve_answers(vocab, [str(i) for i in range(1, 11)], "Score (1-10)=", 264)
  digits = {vocab.encode(str(d))[0] for d in range(10)}
  prompts = [list(vocab.encode(f"rate {i}. Score (1-10)=")) for i in range(5)]
  got = labeler.answer_scores(prompts, answers, complete=True)
  longest = max(len(p) for p in prompts) + max(len(a) for a in answers.ids)
  for prompt, row in zip(prompts, got):
    # every answer after the prompt in one batch, zeros after its end (a causal model: the
    # positions up to its last token never see them)
    seqs = np.zeros((len(answers.ids), longest), np.int32)
    for c, ans in enumerate(answers.ids):
      seqs[c, : len(prompt) + len(ans)] = prompt + list(ans)
    logits = np.asarray(labeler.model.apply({"params": labeler.params}, seqs), np.float64)
    for c, ans in enumerate(answers.ids):
      end = len(prompt) + len(ans)
      probs = np.exp(logits[c, :end] - logits[c, :end].max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      expected = sum(np.log(probs[len(prompt) - 1 + k, t]) for k, t in enumerate(ans))
      expected += np.log(1 - sum(probs[-1, d] for d in digits))
      assert row[c] == pytest.approx(expected, abs=2e-3)


def test_fit_text_cuts_a_decoded_sample_to_its_token_budget(labeler):
  assert labeler.fit_text("short", 32) == "short"
  replaced = "ok \ufffd\ufffd" * 20  # invalid bytes decode to U+FFFD, which encodes to three bytes
  fitted = labeler.fit_text(replaced, 32)
  assert len(labeler.vocab.encode(fitted)) <= 32 and replaced.startswith(fitted) and len(fitted) >= 10


def test_chain_of_thought_never_overflows_max_len_near_the_limit(labeler, monkeypatch):
  """Pairs whose responses leave just enough room (or not) are labeled or marked too long; none
  fails the job once its rationale and ending are appended (the reserve counts them exactly).
  The rationales are the worst case: every token used, and bytes that decode to U+FFFD, which
  encodes three times longer."""
  full = "\ufffd" * 12 + "x" * 12  # 24 generated tokens that re-encode to 48
  monkeypatch.setattr(labeler, "generate", lambda ids, *args: [full] * len(ids))
  config = PromptConfig(task="helpfulness", custom_preamble="Pick.", chain_of_thought=True, max_rationale_tokens=24)
  pairs = [
    {"id": f"n{n}", "inputs": "q?", "response_a": "a" * n, "response_b": "b" * n, "human_choice": 0}
    for n in range(120, 170)
  ]
  recs = labeler.label_pairs(pairs, config)
  assert [r["id"] for r in recs] == [p["id"] for p in pairs]
  assert any(r["p_a"] is None for r in recs) and any(r["p_a"] is not None for r in recs)
  for r in recs:
    if r["p_a"] is not None:
      assert all(len(labeler.vocab.encode(x)) <= 24 for x in r["rationales"]["ab"])
