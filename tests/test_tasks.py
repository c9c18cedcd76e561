"""The registered seqio tasks: fields, tokenization round trips, truncation, shards."""

import json
import os

import numpy as np
import pytest
import seqio
from conftest import REAL_HH

from rlaif_jax import data, tasks

EXPECTED_COUNTS = {  # examples per split in the bundled fixtures
  ("tldr_sft", "train"): 200,
  ("tldr_sft", "validation"): 28,
  ("tldr_prompts", "test"): 28,
  ("tldr_comparisons", "train"): 48,
  ("tldr_comparisons", "validation"): 12,
  ("hh_helpful_pairs", "train"): 24,
  ("hh_harmless_pairs", "test"): 12,
  ("hh_helpful_sft", "train"): 24,
  ("hh_helpful_sft", "test"): 12,
  ("hh_harmless_sft", "train"): 24,
  ("hh_harmless_sft", "test"): 12,
  ("hh_helpful_prompts", "train"): 17,
  ("hh_helpful_prompts", "test"): 11,
  ("hh_harmless_prompts", "train"): 17,
  ("hh_harmless_prompts", "test"): 11,
  ("hh_prompts", "train"): 34,
  ("hh_prompts", "test"): 22,
  ("candidates", "train"): 16,
  ("prompts", "test"): 8,
}


def test_every_task_is_registered():
  for name in tasks.TASK_NAMES:
    assert name in seqio.TaskRegistry.names()


@pytest.mark.parametrize("task, split", sorted(EXPECTED_COUNTS))
def test_fixture_counts_and_round_trips(task, split):
  examples = data.task_examples(task, split)
  assert len(examples) == EXPECTED_COUNTS[(task, split)]
  vocab = seqio.get_mixture_or_task(task).output_features["inputs"].vocabulary
  for ex in examples[:5]:
    assert ex["id"]
    for key in ("inputs", "targets", "response_a", "response_b"):
      if key in ex:
        ids = [int(t) for t in ex[key] if t != vocab.eos_id]
        assert vocab.decode(ids) == ex[f"{key}_pretokenized"].decode()
    if "response_a" in ex:
      assert ex["response_a"][-1] == vocab.eos_id and ex["human_choice"] in (-1, 0, 1)


def test_pair_task_carries_labels_and_truncation_keeps_the_cue():
  examples = data.task_examples("hh_helpful_pairs", "train")
  arrays, stats = data.pair_features(examples, 64)
  assert stats["truncated_inputs"] > 0
  vocab = data.byte_vocabulary()
  assert stats["truncated_responses"] > 0  # long replies yield to the minimum context
  for i in range(len(examples)):
    for j in range(2):
      context = arrays["input_mask"][i, j] & ~arrays["response_mask"][i, j]
      assert context.sum() >= 32
      assert vocab.decode(arrays["tokens"][i, j][context].tolist()).endswith("\n\nAssistant:")
  assert set(arrays["human_choice"].tolist()) == {0, 1}


def _hh_line(*turns: str, rejected: str = " No.", earlier_rejected: str | None = None) -> str:
  """An hh-rlhf line whose dialogues alternate Human and Assistant turns; the last turn is the
  chosen reply, `rejected` replaces it; earlier_rejected replaces the first Assistant turn."""
  cues = ["\n\nHuman:" if i % 2 == 0 else "\n\nAssistant:" for i in range(len(turns))]
  chosen = "".join(c + t for c, t in zip(cues, turns))
  other = list(turns[:-1]) + [rejected]
  if earlier_rejected is not None:
    other[1] = earlier_rejected
  return json.dumps({"chosen": chosen, "rejected": "".join(c + t for c, t in zip(cues, other))}) + "\n"


def test_hh_sft_and_per_subset_prompts_on_hand_made_files(tmp_path, caplog):
  """SFT cuts at the last Assistant cue and skips a line whose dialogues diverge earlier (with
  the counted warning); each subset's prompts task holds its own contexts only, each once."""
  helpful = [
    _hh_line(" Where is Paris?", " In France."),
    _hh_line(" Hi.", " Hello!", " Name a blue fruit.", " A blueberry."),
    _hh_line(" Hi.", " Hello!", " Name a red fruit.", " A cherry.", earlier_rejected=" Go away."),
    _hh_line(" Where is Paris?", " It is the capital of France."),  # the first line's context again
  ]
  harmless = [_hh_line(" How do I pick a lock?", " I can't help with that.")]
  for subset, lines in (("helpful-base", helpful), ("harmless-base", harmless)):
    (tmp_path / "hh-rlhf" / subset).mkdir(parents=True)
    (tmp_path / "hh-rlhf" / subset / "train.jsonl").write_text("".join(lines))
  data.set_data_root(str(tmp_path))
  try:
    sft = data.task_examples("hh_helpful_sft", "train")
    helpful_prompts = data.task_examples("hh_helpful_prompts", "train")
    harmless_prompts = data.task_examples("hh_harmless_prompts", "train")
  finally:
    data.set_data_root(None)
  assert [ex["id"] for ex in sft] == [
    b"helpful-base/train.jsonl:1",
    b"helpful-base/train.jsonl:2",
    b"helpful-base/train.jsonl:4",
  ]
  assert sft[0]["inputs_pretokenized"] == b"\n\nHuman: Where is Paris?\n\nAssistant:"
  assert sft[0]["targets_pretokenized"] == b" In France."
  assert (
    sft[1]["inputs_pretokenized"] == b"\n\nHuman: Hi.\n\nAssistant: Hello!\n\nHuman: Name a blue fruit.\n\nAssistant:"
  )
  assert sft[1]["targets_pretokenized"] == b" A blueberry."
  vocab = data.byte_vocabulary()
  for ex in sft:  # as tldr_sft: the target closes with EOS, the context does not
    assert ex["targets"][-1] == vocab.eos_id and ex["inputs"][-1] != vocab.eos_id
    assert vocab.decode([int(t) for t in ex["targets"][:-1]]) == ex["targets_pretokenized"].decode()
  skipped = "rejected: does not share chosen's dialogue before the last Assistant turn"
  assert dict(tasks.LOAD_REPORTS[("hh_helpful_sft", "train")][0].skipped) == {skipped: 1}
  assert "1 skipped" in caplog.text and skipped in caplog.text
  helpful_contexts = [ex["inputs_pretokenized"].decode() for ex in helpful_prompts]
  assert helpful_contexts == [
    "\n\nHuman: Where is Paris?\n\nAssistant:",
    "\n\nHuman: Hi.\n\nAssistant: Hello!\n\nHuman: Name a blue fruit.\n\nAssistant:",
  ]
  assert [ex["inputs_pretokenized"] for ex in harmless_prompts] == [b"\n\nHuman: How do I pick a lock?\n\nAssistant:"]


def test_dialogue_tasks_on_the_fixtures_keep_to_their_subset():
  for short in ("helpful", "harmless"):
    contexts = {ex["inputs_pretokenized"] for ex in data.task_examples(f"hh_{short}_pairs", "test")}
    prompts = [ex["inputs_pretokenized"] for ex in data.task_examples(f"hh_{short}_prompts", "test")]
    assert len(prompts) == len(set(prompts)) and set(prompts) == contexts
    assert all(p.endswith(b"\n\nAssistant:") for p in prompts)
    sft = data.task_examples(f"hh_{short}_sft", "test")
    assert {ex["inputs_pretokenized"] for ex in sft} == contexts
  mixed = {ex["inputs_pretokenized"] for ex in data.task_examples("hh_prompts", "test")}
  helpful = {ex["inputs_pretokenized"] for ex in data.task_examples("hh_helpful_prompts", "test")}
  harmless = {ex["inputs_pretokenized"] for ex in data.task_examples("hh_harmless_prompts", "test")}
  assert not helpful & harmless and mixed == helpful | harmless


def test_tldr_truncation_keeps_the_tldr_cue():
  arrays, stats = data.task_arrays("tldr_prompts", "validation", "prompts", 64)
  assert stats["truncated_inputs"] == 28
  vocab = data.byte_vocabulary()
  for row in arrays["tokens"]:
    assert vocab.decode(row.tolist()).endswith("\nTL;DR:")


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_partition_a_task_exactly(num_shards):
  full = [ex["id"] for ex in data.task_examples("tldr_sft", "train")]
  shards = [
    [ex["id"] for ex in data.task_examples("tldr_sft", "train", seqio.ShardInfo(i, num_shards))]
    for i in range(num_shards)
  ]
  merged = [x for s in shards for x in s]
  assert sorted(merged) == sorted(full) and len(set(merged)) == len(full)
  assert all(abs(len(s) - len(full) / num_shards) < 1 for s in shards)


def test_candidates_factory_on_a_users_file(tmp_path):
  path = tmp_path / "mine.jsonl"
  path.write_text('{"id": "u1", "input": "Q?", "response_a": "yes", "response_b": "no", "human_choice": 1}\n')
  tasks.register_candidates_task("my_candidates_test", {"test": str(path)})
  (ex,) = data.task_examples("my_candidates_test", "test")
  assert ex["id"] == b"u1" and ex["human_choice"] == 1 and ex["inputs_pretokenized"] == b"Q?"


def test_real_sample_through_the_task(tmp_path):
  root = tmp_path / "root" / "hh-rlhf" / "harmless-base"
  root.mkdir(parents=True)
  os.symlink(REAL_HH, root / "test.jsonl.gz")
  data.set_data_root(str(tmp_path / "root"))
  try:
    examples = data.task_examples("hh_harmless_pairs", "test")
    prompts = data.task_examples("hh_prompts", "test")
    sft = data.task_examples("hh_harmless_sft", "test")
  finally:
    data.set_data_root(None)
  assert len(examples) == 199
  assert dict(tasks.LOAD_REPORTS[("hh_harmless_pairs", "test")][0].skipped) == {"chosen: empty response": 1}
  assert len(prompts) == len({p["inputs_pretokenized"] for p in prompts}) <= 199
  assert len(sft) == 199 and dict(tasks.LOAD_REPORTS[("hh_harmless_sft", "test")][0].skipped) == {
    "chosen: empty response": 1
  }
  arrays, stats = data.pair_features(examples, 512)
  assert stats["examples"] == 199 and stats["truncated_inputs"] == 117
  last = arrays["input_mask"].sum(-1) - 1  # [N, 2]: each row's last real token
  ends = np.take_along_axis(arrays["tokens"], last[..., None], -1)[..., 0]
  assert (ends != 1).sum() == stats["truncated_responses"] == 27  # only cut replies lose their EOS


def test_tasks_for_a_sentencepiece_vocabulary(tmp_path):
  """A small SentencePiece model trained here stands in for a real checkpoint's tokenizer."""
  import sentencepiece as spm

  corpus = tmp_path / "corpus.txt"
  texts = [
    ex["inputs_pretokenized"].decode() + ex["targets_pretokenized"].decode()
    for ex in data.task_examples("tldr_sft", "train")
  ]
  corpus.write_text("\n".join(t.replace("\n", " ") for t in texts))
  # As Gemma's tokenizer: no normalization, whitespace kept, bytes for unseen characters ("\n").
  spm.SentencePieceTrainer.train(
    input=str(corpus),
    model_prefix=str(tmp_path / "sp"),
    vocab_size=400,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    byte_fallback=True,
    minloglevel=2,
  )
  vocab = data.sentencepiece_vocabulary(str(tmp_path / "sp.model"))
  tasks.register_all(vocab, suffix="_sp_test")
  assert all(f"{name}_sp_test" in seqio.TaskRegistry.names() for name in tasks.TASK_NAMES)
  (ex, *_) = data.task_examples("tldr_sft_sp_test", "validation")
  assert ex["targets"][-1] == vocab.eos_id and len(ex["inputs"]) < 0.8 * len(ex["inputs_pretokenized"])
  assert vocab.decode([int(t) for t in ex["inputs"]]) == ex["inputs_pretokenized"].decode()
  with pytest.raises(FileNotFoundError, match="missing.model"):
    data.sentencepiece_vocabulary(str(tmp_path / "missing.model"))


LABELED_PAIRS = [
  ("tldr_comparisons", "train"),
  ("tldr_comparisons", "validation"),
  ("hh_helpful_pairs", "train"),
  ("hh_helpful_pairs", "test"),
  ("hh_harmless_pairs", "train"),
  ("hh_harmless_pairs", "test"),
  ("candidates", "train"),
  ("candidates", "test"),
]


@pytest.mark.parametrize("task, split", LABELED_PAIRS)
def test_length_does_not_predict_the_fixtures_human_labels(task, split):
  """The prefer-longer and prefer-shorter rules each agree with the humans on 35-65% of the
  labeled pairs: a length counter cannot pass for a preference model on the fixtures."""
  from rlaif_jax.labeling.report import length_baselines, pair_lengths

  pairs = [p for p in data.load_pairs(task, split) if p["human_choice"] in (0, 1)]
  assert len(pairs) >= 4
  baselines = length_baselines(pairs, pair_lengths(pairs))
  assert baselines["baseline_pairs"] == len(pairs)  # no ties in length
  assert 0.35 <= baselines["baseline_prefer_longer"] <= 0.65, baselines
  assert 0.35 <= baselines["baseline_prefer_shorter"] <= 0.65, baselines
