import gzip
import json

import numpy as np
import pytest

from rlaif_jax import data


def test_tldr_prompt_format():
  record = {"subreddit": "cats", "title": "T", "post": "P", "summary": "S"}
  assert data.tldr_prompt(record) == "SUBREDDIT: r/cats\nTITLE: T\nPOST: P\nTL;DR:"


def test_fixture_reads_as_prompt_summary_pairs():
  pairs = data.read_tldr()
  assert len(pairs) == 256
  assert all(p.endswith("\nTL;DR:") and t.startswith(" ") for p, t in pairs)


def test_bad_lines_name_file_line_and_field(tmp_path):
  path = tmp_path / "bad.jsonl.gz"
  with gzip.open(path, "wt") as f:
    f.write(json.dumps({"subreddit": "a", "title": "b", "post": "c", "summary": "d"}) + "\n")
    f.write("\n")
    f.write(json.dumps({"subreddit": "a", "title": "b", "post": "c"}) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl.gz:3: field 'summary' is missing"):
    data.read_tldr(str(path))
  (tmp_path / "broken.jsonl").write_text('{"a": 1}\n{"a": \n')
  with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
    list(data.read_jsonl(str(tmp_path / "broken.jsonl")))
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    list(data.read_jsonl(str(tmp_path / "missing.jsonl")))


def test_truncation_keeps_target_and_cue():
  vocab = data.byte_vocabulary()
  prompt, target = "x" * 100 + "\nTL;DR:", " short summary"
  tokens, loss_mask = data.encode_example(vocab, prompt, target, 40)
  assert len(tokens) == 40
  assert vocab.decode(tokens[loss_mask][:-1].tolist()) == target and tokens[-1] == vocab.eos_id
  assert vocab.decode(tokens[~loss_mask].tolist()).endswith("xxx\nTL;DR:")
  tokens, loss_mask = data.encode_example(vocab, "abc", " de", 40)
  assert vocab.decode(tokens.tolist()[:-1]) == "abc de" and loss_mask.sum() == 4


def test_batches_are_deterministic_and_cover_each_epoch():
  pairs = [(f"p{i}", f" t{i}") for i in range(10)]
  ds = data.SFTDataset(pairs, data.byte_vocabulary(), 16, 4, seed=3)
  again = data.SFTDataset(pairs, data.byte_vocabulary(), 16, 4, seed=3)
  for step in range(6):
    np.testing.assert_array_equal(ds.batch(step)["tokens"], again.batch(step)["tokens"])
  first_epoch = np.concatenate([ds.batch(s)["tokens"] for s in range(5)])[:10]  # 20 rows = 2 epochs
  assert len({row.tobytes() for row in first_epoch}) == 10
  b = ds.batch(0)
  assert b["tokens"].shape == b["loss_mask"].shape == b["input_mask"].shape == (4, 16)
  assert not (b["loss_mask"] & ~b["input_mask"]).any()
