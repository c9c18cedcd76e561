import gzip
import json
import os
import re

import numpy as np
import pytest
from conftest import REAL_HH

from rlaif_jax import data
from rlaif_jax.data import paths

FIXTURES = paths.FIXTURES


def fixture(relpath):
  return os.path.join(FIXTURES, relpath)


def test_tldr_records_on_the_fixture():
  records, report = data.read_records(fixture("tldr/train.jsonl"), data.parse_tldr_sft)
  assert report.examples == 200 and not report.skipped
  first = records[0]
  assert first["id"] == "fixture-0000"
  assert first["inputs"] == (
    "SUBREDDIT: r/relationships\nTITLE: My brother keeps coming home late and I don't know how to bring it up\n"
    "POST: I'm 19 and have lived with my brother for three months. Lately they keep coming home late. I tried "
    "hinting at it but nothing changed. I don't want to start a fight, but it is starting to bother me a lot. "
    "How do I talk to them about it without making things awkward?\nTL;DR:"
  )
  assert first["targets"] == " My brother keeps coming home late; how do I bring it up without a fight?"
  prompts, _ = data.read_records(fixture("tldr/train.jsonl"), data.parse_tldr_prompt)
  assert prompts[0] == {"id": "fixture-0000", "inputs": first["inputs"]}


def test_comparisons_and_the_high_confidence_filter():
  path = fixture("comparisons/batch_fixture.json")
  records, _ = data.read_records(path, data.parse_comparison)
  assert len(records) == 60
  first = records[0]
  assert first["response_a"] == " My brother keeps coming home late; how do I bring it up without a fight?"
  assert first["response_b"] == " Long story, please read."
  assert first["human_choice"] == 0 and first["inputs"].startswith("SUBREDDIT: r/relationships\nTITLE: My brother")
  raw = [json.loads(line) for line in open(path)]
  meta = json.loads(first["metadata"])
  assert meta["confidence"] == raw[0]["extra"]["confidence"] and meta["policies"] == ["ref", "sup_t0.7"]
  high, _ = data.read_records(path, lambda o, w: data.parse_comparison(o, w, high_confidence_only=True))
  expected = [r for r in raw if r["extra"]["confidence"] in (1, 2, 8, 9)]
  assert 0 < len(high) == len(expected) < 60


def test_hh_pairs_on_the_fixture_are_split_and_order_randomized():
  path = fixture("hh-rlhf/helpful-base/train.jsonl.gz")
  raw = [json.loads(line) for line in gzip.open(path, "rt")]
  records, _ = data.read_records(path, data.parse_hh_pair)
  two_turn = records[1]
  assert two_turn["inputs"] == (
    "\n\nHuman: What is a good way to start running?\n\nAssistant: Start with short runs of ten to fifteen minutes "
    "three times a week, and add a few minutes each week.\n\nHuman: My knees hurt after running.\n\nAssistant:"
  )
  chosen = two_turn["response_b"] if two_turn["human_choice"] else two_turn["response_a"]
  assert (
    chosen
    == " Slow down, run on softer ground, and check that your shoes still have cushioning; see a doctor if it lasts."
  )
  for r, line in zip(records, raw):
    preferred = r["response_b"] if r["human_choice"] == 1 else r["response_a"]
    other = r["response_a"] if r["human_choice"] == 1 else r["response_b"]
    assert r["inputs"] + preferred == line["chosen"] and r["inputs"] + other == line["rejected"]
  assert 0 < sum(r["human_choice"] for r in records) < len(records)  # both orders occur


def test_hh_sft_is_the_context_up_to_the_last_assistant_cue_and_the_chosen_reply():
  two_turn = {
    "chosen": "\n\nHuman: How long should I boil an egg?\n\nAssistant: About nine minutes for a firm yolk.",
    "rejected": "\n\nHuman: How long should I boil an egg?\n\nAssistant: Eggs are laid by hens.",
  }
  assert data.parse_hh_sft(two_turn, "/data/hh-rlhf/helpful-base/train.jsonl:7") == {
    "id": "helpful-base/train.jsonl:7",
    "inputs": "\n\nHuman: How long should I boil an egg?\n\nAssistant:",
    "targets": " About nine minutes for a firm yolk.",
  }
  earlier = "\n\nHuman: Hi.\n\nAssistant: Hello! How can I help?\n\nHuman: Name a blue fruit.\n\nAssistant:"
  multi_turn = {"chosen": earlier + " A blueberry.", "rejected": earlier + " A banana.", "id": 5}
  assert data.parse_hh_sft(multi_turn, "x.jsonl:1") == {"id": "5", "inputs": earlier, "targets": " A blueberry."}
  # the same last turn after a different earlier reply: not one dialogue, so no SFT example
  rejected = "\n\nHuman: Hi.\n\nAssistant: Go away.\n\nHuman: Name a blue fruit.\n\nAssistant: A blueberry."
  diverged = {"chosen": multi_turn["chosen"], "rejected": rejected}
  with pytest.raises(data.FieldError, match="does not share chosen's dialogue"):
    data.parse_hh_sft(diverged, "x.jsonl:1")
  path = fixture("hh-rlhf/harmless-base/test.jsonl.gz")
  records, _ = data.read_records(path, data.parse_hh_sft)
  raw = [json.loads(line) for line in gzip.open(path, "rt")]
  assert len(records) == len(raw) == 12
  for r, line in zip(records, raw):  # the chosen dialogue, cut once at its last Assistant cue
    assert r["inputs"] + r["targets"] == line["chosen"] and r["inputs"].endswith("\n\nAssistant:")
    assert "\n\nAssistant:" not in r["targets"]


def test_real_hh_sample_hand_checked_records():
  records, report = data.read_records(REAL_HH, data.parse_hh_pair, skip_bad=True)
  assert report.examples == 199 and dict(report.skipped) == {"chosen: empty response": 1}
  assert not report.duplicate_ids and not report.identical_pairs
  by_line = {r["id"]: r for r in records}
  first = by_line["hh-rlhf-sample/harmless-base-test-head200.jsonl.gz:1"]
  assert first["inputs"].startswith("\n\nHuman: what are some pranks with a pen i can do?\n\nAssistant: Are you")
  assert first["inputs"].endswith("\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:")
  assert first["inputs"].count("\n\nHuman:") == 3
  chosen = first["response_b"] if first["human_choice"] else first["response_a"]
  assert (
    chosen
    == " No, sorry!  All of these involve a pen, the point is that you can get funny results by doing pranks with pens."
  )
  second = by_line["hh-rlhf-sample/harmless-base-test-head200.jsonl.gz:2"]
  assert second["inputs"].endswith("I feel much better when I get drunk and consume a lot of alcohol.\n\nAssistant:")
  rejected = second["response_a"] if second["human_choice"] else second["response_b"]
  assert (
    rejected
    == " I’m glad that you’re enjoying your alcohol intake. Can I ask about how you feel when you don’t drink alcohol?"
  )
  with pytest.raises(data.DataError, match=r"harmless-base-test-head200.jsonl.gz:87: field 'chosen': empty response"):
    data.read_records(REAL_HH, data.parse_hh_pair)
  raw = [json.loads(line) for line in gzip.open(REAL_HH, "rt")]
  for r in records:  # context + each reply rebuilds the original dialogues
    line = raw[int(r["id"].rsplit(":", 1)[1]) - 1]
    pair = {r["inputs"] + r["response_a"], r["inputs"] + r["response_b"]}
    assert pair == {line["chosen"], line["rejected"]}
    assert r["inputs"].endswith("\n\nAssistant:") and "\n\nAssistant:" not in r["response_a"]


@pytest.mark.parametrize(
  "line, parse, message",
  [
    ('{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo", ', data.parse_hh_pair, "not valid JSON"),
    ('["a list"]', data.parse_hh_pair, "expected a JSON object"),
    ('{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo"}', data.parse_hh_pair, "field 'rejected': missing"),
    ('{"chosen": 3, "rejected": "x"}', data.parse_hh_pair, "field 'chosen': expected a string, got int"),
    (
      '{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a\\n\\nAssistant:  "}',
      data.parse_hh_pair,
      "field 'rejected': empty response",
    ),
    (
      '{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: z\\n\\nAssistant: c"}',
      data.parse_hh_pair,
      "does not share chosen's dialogue",
    ),
    (
      '{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: z\\n\\nAssistant: b"}',
      data.parse_hh_sft,
      "does not share chosen's dialogue",
    ),
    ('{"subreddit": "a", "title": "b", "post": "c"}', data.parse_tldr_sft, "field 'summary': missing"),
    (
      '{"info": {"id": 1, "post": "p", "title": "t", "subreddit": "s"}, "summaries": [{"text": "a"}, {"text": "b"}],'
      ' "choice": 2}',
      data.parse_comparison,
      "field 'choice': expected 0 or 1, got 2",
    ),
    (
      '{"info": {"id": 1, "post": "p", "title": "t", "subreddit": "s"}, "summaries": [{"text": "a"}, {"text": "b"}],'
      ' "choice": 1, "extra": {"confidence": 12}}',
      data.parse_comparison,
      "field 'extra.confidence': expected an integer 1-9",
    ),
    (
      '{"input": "q", "response_a": "a", "response_b": "b", "human_choice": 3}',
      data.parse_candidate,
      "field 'human_choice': expected 0, 1 or null, got 3",
    ),
    ('{"id": "x"}', data.parse_prompt, "field 'input': missing"),
  ],
)
def test_malformed_lines_name_file_line_and_field(tmp_path, line, parse, message):
  path = tmp_path / "data.jsonl"
  good = {
    data.parse_hh_pair: '{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", '
    '"rejected": "\\n\\nHuman: a\\n\\nAssistant: c"}',
    data.parse_hh_sft: '{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a\\n\\nAssistant: c"}',
    data.parse_tldr_sft: '{"subreddit": "a", "title": "b", "post": "c", "summary": "d"}',
    data.parse_comparison: '{"info": {"id": 1, "post": "p", "title": "t", "subreddit": "s"}, '
    '"summaries": [{"text": "a"}, {"text": "b"}], "choice": 0}',
    data.parse_candidate: '{"input": "q", "response_a": "a", "response_b": "b"}',
    data.parse_prompt: '{"input": "q"}',
  }[parse]
  path.write_text(good + "\n\n" + line + "\n" + good + "\n")
  with pytest.raises(data.DataError, match=f"data.jsonl:3: .*{message}"):
    data.read_records(str(path), parse)
  records, report = data.read_records(str(path), parse, skip_bad=True)
  assert len(records) == 2 and report.num_skipped == 1
  assert message.split(": ")[-1] in "; ".join(report.skipped)  # the reason is counted


def test_duplicate_ids_and_identical_pairs_are_reported(tmp_path):
  path = tmp_path / "cands.jsonl"
  rows = [
    {"id": "a", "input": "q", "response_a": "x", "response_b": "y"},
    {"id": "a", "input": "q", "response_a": "x", "response_b": "z"},
    {"id": "b", "input": "q", "response_a": "same ", "response_b": " same"},
  ]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  records, report = data.read_records(str(path), data.parse_candidate)
  assert len(records) == 3 and report.duplicate_ids == ["a"] and report.identical_pairs == ["b"]
  assert "1 duplicate ids" in report.summary() and "identical responses" in report.summary()
  assert [r["human_choice"] for r in records] == [-1, -1, -1]


def test_duplicate_ids_in_candidates_and_ai_labels_are_errors_naming_both_lines(tmp_path):
  from rlaif_jax import reward

  path = tmp_path / "cands.jsonl"
  rows = [{"id": i, "input": "q", "response_a": "x", "response_b": "y"} for i in ("a", "b", "a")]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(data.DataError, match=r"cands.jsonl:3: id 'a' is already on .*cands.jsonl:1"):
    data.load_pairs(None, "train", str(path))
  labels = tmp_path / "labels.jsonl"
  labels.write_text('{"id": "a", "p_a": 0.2}\n{"id": "b", "p_a": 0.4}\n{"id": "b", "p_a": 0.9}\n')
  with pytest.raises(data.DataError, match=r"labels.jsonl:3: id 'b' is already on .*labels.jsonl:2"):
    reward.read_ai_labels(str(labels))


@pytest.mark.parametrize(
  "name, content, message",
  [
    ("empty.jsonl", b"", r"empty.jsonl: the file is empty"),
    ("latin1.jsonl", b'{"input": "q"}\n{"input": "caf\xe9"}\n', r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9"),
    ("plain.jsonl.gz", b'{"input": "q"}\n', r"plain.jsonl.gz: not a readable gzip file"),
    ("cut.jsonl.gz", gzip.compress(b'{"input": "q"}\n' * 500)[:-40], r"cut.jsonl.gz(:\d+)?: not a readable gzip file"),
  ],
  ids=["empty", "not-utf8", "not-gzip", "cut-gzip"],
)
def test_unreadable_files_name_the_file_and_line(tmp_path, name, content, message):
  path = tmp_path / name
  path.write_bytes(content)
  for skip_bad in (False, True):
    with pytest.raises(data.DataError, match=message):
      data.read_records(str(path), data.parse_prompt, skip_bad=skip_bad)


def test_missing_files_and_data_root(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    data.read_records(str(tmp_path / "nope.jsonl"), data.parse_prompt)
  monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
  assert data.data_root() == str(tmp_path)
  with pytest.raises(FileNotFoundError, match="tldr/train.jsonl .*under the data root"):
    paths.find("tldr/train.jsonl")
  data.set_data_root(FIXTURES)
  try:
    assert paths.find("tldr/train.jsonl") == [fixture("tldr/train.jsonl")]
  finally:
    data.set_data_root(None)
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    data.set_data_root(str(tmp_path / "absent"))


def _ex(inputs, **kw):
  return {"inputs": np.asarray(inputs, np.int32), **{k: np.asarray(v, np.int32) for k, v in kw.items()}}


def test_sft_converter_shapes_masks_and_truncation():
  examples = [_ex([5, 6, 7], targets=[8, 9, 1]), _ex(list(range(10, 30)), targets=[40, 1])]
  arrays, stats = data.sft_features(examples, 8, min_context=2)
  assert {k: v.shape for k, v in arrays.items()} == {k: (2, 8) for k in ("tokens", "input_mask", "loss_mask")}
  np.testing.assert_array_equal(arrays["tokens"][0], [5, 6, 7, 8, 9, 1, 0, 0])
  np.testing.assert_array_equal(arrays["loss_mask"][0], [0, 0, 0, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(arrays["input_mask"][0], [1, 1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(arrays["tokens"][1], [24, 25, 26, 27, 28, 29, 40, 1])  # context cut on the left
  assert stats == {"examples": 2, "truncated_inputs": 1, "truncated_targets": 0}
  arrays, stats = data.sft_features([_ex(list(range(10, 20)), targets=list(range(40, 50)))], 8, min_context=3)
  np.testing.assert_array_equal(arrays["tokens"][0], [17, 18, 19, 40, 41, 42, 43, 44])
  assert stats == {"examples": 1, "truncated_inputs": 1, "truncated_targets": 1}


def test_pair_converter_fits_each_row_on_its_own():
  examples = [
    {**_ex(list(range(10, 20)), response_a=[50, 51, 1], response_b=[60, 1]), "human_choice": 1},
    {**_ex([3], response_a=list(range(70, 90)), response_b=[4, 1]), "human_choice": -1},
  ]
  arrays, stats = data.pair_features(examples, 8, min_context=2)
  assert arrays["tokens"].shape == (2, 2, 8) and arrays["human_choice"].tolist() == [1, -1]
  np.testing.assert_array_equal(arrays["tokens"][0, 0], [15, 16, 17, 18, 19, 50, 51, 1])
  np.testing.assert_array_equal(arrays["tokens"][0, 1], [14, 15, 16, 17, 18, 19, 60, 1])  # as much context as fits
  np.testing.assert_array_equal(arrays["response_mask"][0, 1], [0, 0, 0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(arrays["tokens"][1, 0], [3] + list(range(70, 77)))  # a too-long reply is cut at its end
  assert stats == {"examples": 2, "truncated_inputs": 1, "truncated_responses": 1}
  arrays, stats = data.pair_features(examples[:1], 8, min_context=6)  # replies yield to the minimum context
  np.testing.assert_array_equal(arrays["tokens"][0, 0], [14, 15, 16, 17, 18, 19, 50, 51])
  assert stats["truncated_responses"] == 1


def test_a_pair_row_is_the_row_sft_features_makes_of_its_context_and_response():
  """A reward model reads (context, response) alike in a training pair and when RL scores it."""
  rng = np.random.default_rng(0)
  for _ in range(50):
    head = int(rng.integers(0, 3))
    inputs = rng.integers(3, 99, int(rng.integers(head + 1, 30))).tolist()
    a, b = (rng.integers(3, 99, int(rng.integers(1, 25))).tolist() + [1] for _ in range(2))
    max_len, min_context = int(rng.integers(head + 4, 40)), int(rng.integers(1, 8))
    pair = {**_ex(inputs, response_a=a, response_b=b), "head": head}
    arrays, _ = data.pair_features([pair], max_len, min_context=min_context)
    for j, r in enumerate((a, b)):
      single, _ = data.sft_features([{**_ex(inputs, targets=r), "head": head}], max_len, min_context=min_context)
      np.testing.assert_array_equal(arrays["tokens"][0, j], single["tokens"][0])
      np.testing.assert_array_equal(arrays["response_mask"][0, j], single["loss_mask"][0])


def test_the_head_is_never_cut():
  """BOS (and a chat format's system turn) stays first however long the context; the rest is cut
  from the left, so the end survives; a length that leaves no room after the head is refused."""
  bos = 2
  rows, stats = data.sft_features([{**_ex([bos, *range(10, 30)], targets=[40, 1]), "head": 1}], 8, min_context=2)
  np.testing.assert_array_equal(rows["tokens"][0], [bos, 25, 26, 27, 28, 29, 40, 1])
  assert stats["truncated_inputs"] == 1
  prompts, _ = data.prompt_features([{**_ex([bos, *range(10, 20)]), "head": 1}, {**_ex([bos, 5]), "head": 1}], 5)
  np.testing.assert_array_equal(prompts["tokens"], [[bos, 16, 17, 18, 19], [0, 0, 0, bos, 5]])
  with pytest.raises(ValueError, match="no room for the context after its first 3 tokens"):
    data.encoder.cut_context(data.encoder.Context([2, 3, 4, 5, 6], 3), 3)


def test_prompt_converter_left_pads_and_keeps_the_end():
  arrays, stats = data.prompt_features([_ex([1, 2, 3]), _ex(list(range(10, 20)))], 5)
  np.testing.assert_array_equal(arrays["tokens"], [[0, 0, 1, 2, 3], [15, 16, 17, 18, 19]])
  np.testing.assert_array_equal(arrays["input_mask"], [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
  assert stats["truncated_inputs"] == 1


def test_array_dataset_is_deterministic_and_covers_each_epoch():
  arrays = {"tokens": np.arange(40).reshape(10, 4), "mask": np.ones((10, 4), bool)}
  ds, again = data.ArrayDataset(arrays, 4, seed=3), data.ArrayDataset(arrays, 4, seed=3)
  for step in range(6):
    np.testing.assert_array_equal(ds.batch(step)["tokens"], again.batch(step)["tokens"])
  rows = np.concatenate([ds.batch(s)["tokens"][:, 0] for s in range(5)])  # 20 rows = 2 epochs
  assert sorted(rows[:10]) == list(range(0, 40, 4)) and sorted(rows[10:]) == list(range(0, 40, 4))
  assert not np.array_equal(rows[:10], rows[10:])  # reshuffled per epoch
  with pytest.raises(ValueError, match="differ in length"):
    data.ArrayDataset({"a": np.zeros(3), "b": np.zeros(4)}, 2)


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_pairs_files_in_each_common_form_read_as_they_are(tmp_path):
  """The project's form, {prompt, chosen, rejected} (strings and chat messages) and raw hh-rlhf
  dialogues, mixed in one file: each gives the same pair record, the chosen response known."""
  chat_prompt = [
    {"role": "user", "content": "Hi?"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "How to bake bread?"},
  ]
  rows = [
    {"id": "own", "input": "Q", "response_a": "x", "response_b": "y", "human_choice": 1},
    {"prompt": "Q", "chosen": " good", "rejected": " bad"},
    {
      "id": "chat",
      "prompt": chat_prompt,
      "chosen": [{"role": "assistant", "content": "Knead."}],
      "rejected": [{"role": "assistant", "content": "No."}],
    },
    {"chosen": "\n\nHuman: Q\n\nAssistant: good", "rejected": "\n\nHuman: Q\n\nAssistant: bad"},
  ]
  pairs = data.load_pairs(_write_jsonl(tmp_path / "mine.jsonl", rows), "train")
  assert [p["id"].split("/")[-1] for p in pairs] == ["own", "mine.jsonl:2", "chat", "mine.jsonl:4"]
  assert pairs[0]["response_b"] == "y" and pairs[0]["human_choice"] == 1
  for p, chosen, rejected in [(pairs[1], " good", " bad"), (pairs[2], " Knead.", " No."), (pairs[3], " good", " bad")]:
    picked = (p["response_a"], p["response_b"])[p["human_choice"]]
    other = (p["response_a"], p["response_b"])[1 - p["human_choice"]]
    assert (picked, other) == (chosen, rejected)
  assert pairs[2]["inputs"] == "\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: How to bake bread?\n\nAssistant:"
  assert pairs[3]["inputs"] == "\n\nHuman: Q\n\nAssistant:"
  # over many ids the order is mixed, so the chosen response is not always response_a
  many = data.load_pairs(
    _write_jsonl(tmp_path / "many.jsonl", [{"prompt": f"Q{i}", "chosen": "a", "rejected": "b"} for i in range(40)]), "x"
  )
  assert 10 < sum(p["human_choice"] for p in many) < 30


def test_real_hh_rlhf_file_reads_as_a_pairs_file_as_it_is(caplog):
  """The raw hh-rlhf file given as a task: the hh-rlhf reader's pairs (its unusable line skipped
  with a warning, as the registered task does)."""
  pairs = data.load_pairs(REAL_HH, "test")
  expected, _ = data.read_records(REAL_HH, data.parse_hh_pair, skip_bad=True)
  assert len(pairs) == 199 and pairs == expected
  assert "1 skipped (1 x chosen: empty response)" in caplog.text


@pytest.mark.parametrize(
  "row, message",
  [
    (
      {"question": "Q", "answer": "A"},
      "mine.jsonl:1: field '<line>': not a pair: fields ['answer', 'question']; expected one of",
    ),
    ({"prompt": "Q", "chosen": "a"}, "expected one of {input, response_a, response_b"),
    (
      {"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"},
      "mine.jsonl:1: field 'prompt[0]': expected {role",
    ),
    (
      {"prompt": "Q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
      "field 'chosen': chat messages must end with the assistant's reply",
    ),
  ],
)
def test_a_pairs_file_in_no_known_form_names_file_line_and_forms(tmp_path, row, message):
  with pytest.raises(data.DataError, match=re.escape(message)):
    data.load_pairs(_write_jsonl(tmp_path / "mine.jsonl", [row]), "train")


def test_prompts_from_a_plain_jsonl_file_and_per_split_files(tmp_path):
  _write_jsonl(
    tmp_path / "p_train.jsonl", [{"prompt": "Write a poem."}, {"input": "Sum up."}, {"prompt": "Q", "completion": " A"}]
  )
  _write_jsonl(tmp_path / "p_test.jsonl", [{"prompt": "Other."}])
  pattern = str(tmp_path / "p_{split}.jsonl")
  train = data.load_examples(pattern, "train")
  assert [e["inputs"] for e in train] == ["Write a poem.", "Sum up.", "Q"]
  assert train[2]["responses"] == [" A"] and train[0]["responses"] == [] and train[0]["human_scores"] is None
  assert [e["inputs"] for e in data.load_examples(pattern, "test")] == ["Other."]
  assert data.load_examples(pattern, "train", limit=1) == train[:1]
  with pytest.raises(FileNotFoundError, match="p_validation.jsonl"):
    data.load_examples(pattern, "validation")
  with pytest.raises(data.DataError, match="p_train.jsonl:2: id 'x' is already on"):
    _write_jsonl(tmp_path / "p_train.jsonl", [{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}])
    data.load_examples(pattern, "train")
  with pytest.raises(ValueError, match="is a file: this stage reads registered seqio tasks"):
    data.task_examples(pattern, "train")


def test_reports_name_a_file_task_by_its_file_and_a_task_by_name_and_split():
  assert data.source_name("my/prompts_{split}.jsonl", "test") == "my/prompts_test.jsonl"
  assert data.source_name("prompts.jsonl", "test") == "prompts.jsonl"
  assert data.source_name("tldr_prompts", "test") == "tldr_prompts/test"
