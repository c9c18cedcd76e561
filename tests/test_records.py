"""Append-and-resume records: what a kill leaves behind is resumed without merging lines."""

import gzip
import json
import os
import re
import time

import pytest

from rlaif_jax import records


def test_a_torn_last_line_is_dropped_and_appends_start_on_a_new_line(tmp_path):
  path = tmp_path / "labels.jsonl"
  path.write_text('{"id": "a", "p_a": 0.1}\n{"id": "b", "p_a": 0.')  # killed inside the second record
  with records.Records(str(path)) as out:
    assert out.done == {"a"}
    out.append([{"id": "b", "p_a": 0.2}])
  assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_a_complete_last_line_without_its_newline_is_kept_and_not_merged(tmp_path):
  path = tmp_path / "labels.jsonl"
  path.write_text('{"id": "a", "p_a": 0.1}')  # written whole, newline missing
  with records.Records(str(path)) as out:
    assert out.done == {"a"}
    out.append([{"id": "b", "p_a": 0.2}])
  records.append_jsonl(str(path), [{"id": "c", "p_a": 0.3}])
  assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b", "c"]
  assert [r["id"] for r in records.read_jsonl(str(path))] == ["a", "b", "c"]


def test_whole_files_are_written_atomically(tmp_path):
  path = tmp_path / "deep" / "summary.json"
  records.write_json(str(path), {"x": 1})
  records.write_jsonl(str(tmp_path / "g.jsonl"), [{"id": 1}, {"id": 2}])
  assert json.loads(path.read_text()) == {"x": 1} and not (tmp_path / "deep" / "summary.json.tmp").exists()
  assert records.read_jsonl(str(tmp_path / "g.jsonl")) == [{"id": 1}, {"id": 2}]


def _lines(path):
  return path.read_text().splitlines()


def test_a_bad_line_in_the_middle_is_an_error_naming_file_and_line_and_nothing_is_lost(tmp_path):
  path = tmp_path / "labels.jsonl"
  good = [json.dumps({"id": f"p{i}", "p_a": 0.5}) for i in range(60)]
  path.write_text("\n".join(good[:5] + ['{"id": "p5", "p_a": 0.{"id": "x"}'] + good[6:]) + "\n")
  before = path.read_bytes()
  with pytest.raises(records.RecordsError, match=r"labels.jsonl:6: not a JSON record"):
    records.Records(str(path))
  assert path.read_bytes() == before  # the 54 good records after the bad line are still there
  # Bytes that are not UTF-8 are named the same way; so is a bad last line that has its newline.
  path.write_bytes(b'{"id": "a"}\n\xff\xfe\n{"id": "b"}\n')
  with pytest.raises(records.RecordsError, match=r"labels.jsonl:2: "):
    records.read_jsonl(str(path))
  path.write_text('{"id": "a"}\n{"id": "b", \n')
  with pytest.raises(records.RecordsError, match=r"labels.jsonl:2: "):
    records.read_jsonl(str(path))


def test_records_made_with_other_settings_are_not_reused(tmp_path):
  path = tmp_path / "labels.jsonl"
  base = {"labeler": "pretrained:gemma3-270m", "prompt.preamble": "base", "max_len": 1024}
  with records.Records(str(path), base) as out:
    out.append([{"id": "a", "p_a": 0.1}, {"id": "b", "p_a": 0.7}])
  with pytest.raises(records.RecordsError, match=r"\(max_len: 1024 -> 2048\)"):  # the first run says what it used
    records.Records(str(path), base | {"max_len": 2048})
  with records.Records(str(path), dict(base)) as out:  # the same settings resume
    assert out.done == {"a", "b"}
  for change, message in [
    ({"prompt.preamble": "detailed"}, "prompt.preamble: 'base' -> 'detailed'"),
    ({"max_len": 512}, "max_len: 1024 -> 512"),
    ({"labeler": "checkpoint:/runs/sft/checkpoints"}, "labeler: 'pretrained:gemma3-270m' -> 'checkpoint:/runs/sft"),
  ]:
    with pytest.raises(records.RecordsError, match=r"2 of its 2 records were made with other settings") as e:
      records.Records(str(path), base | change)
    assert message in str(e.value) and "delete or move" in str(e.value)
  path.write_text('{"id": "a", "p_a": 0.1}\n')  # written before records said what made them
  with pytest.raises(records.RecordsError, match=r"records without settings"):
    records.Records(str(path), base)


def test_failed_records_are_retried_and_ids_stay_unique(tmp_path):
  path = tmp_path / "labels.jsonl"
  with records.Records(str(path)) as out:
    out.append([{"id": "a", "p_a": 0.1}, {"id": "long", "p_a": None, "error": "prompt too long"}])
  with records.Records(str(path)) as out:
    assert out.done == {"a"}  # the failed pair is to do again
    out.append([{"id": "long", "p_a": 0.4}])
  assert [json.loads(line) for line in _lines(path)] == [{"id": "a", "p_a": 0.1}, {"id": "long", "p_a": 0.4}]
  path.write_text('{"id": "a", "p_a": 0.1}\n{"id": "b", "p_a": 0.2}\n{"id": "a", "p_a": 0.3}\n')
  with pytest.raises(records.RecordsError, match=r"labels.jsonl: id 'a' is on line 1 and again on line 3"):
    records.Records(str(path))


class _StubLabeler:
  """Stands in for a Labeler: P(A) = 0.25, and pairs longer than max_len characters fail."""

  truncated = 0

  def __init__(self, max_len):
    self.max_len = max_len

  def label_pairs(self, pairs, config, exemplars=(), seed=0):
    return [
      {"id": p["id"], "p_a": None, "error": "too long"}
      if len(p["response_a"]) > self.max_len
      else {"id": p["id"], "p_a": 0.25, "context_cut": len(p["inputs"]) > self.max_len}
      for p in pairs
    ]


def test_a_label_job_rerun_with_other_settings_stops_and_failed_pairs_are_retried_at_a_larger_max_len(tmp_path):
  from rlaif_jax.labeling import PromptConfig, jobs

  pairs = [
    {"id": f"p{i}", "inputs": "q", "response_a": "a" * (10 * i), "response_b": "b", "human_choice": -1}
    for i in range(4)
  ]
  info = {"labeler": "stub", "labeler_source": "pretrained:stub", "prompt_variant": "base"}
  run = lambda max_len, config=PromptConfig(preamble="base"), pairs=pairs: jobs.label_all(  # noqa: E731
    _StubLabeler(max_len), pairs, config, [], str(tmp_path), 2, 0, info
  )
  assert run(15)["newly_labeled"] == 4  # p2 and p3 fail: too long
  labels = tmp_path / "labels.jsonl"
  assert sum("error" in line for line in _lines(labels)) == 2
  assert run(15)["newly_labeled"] == 2  # the failed pairs are tried again, the labeled ones are not
  with pytest.raises(records.RecordsError, match=r"prompt.preamble: 'base' -> 'detailed'"):
    run(15, PromptConfig(preamble="detailed"))
  assert run(100)["newly_labeled"] == 2  # a larger max_len: the failed pairs labeled, the whole ones kept
  assert "error" not in labels.read_text() and {r["max_len"] for r in records.read_jsonl(str(labels))} == {15, 100}
  assert run(25)["newly_labeled"] == 2  # a smaller one: what was made at a larger one might not hold
  cut = [{**p, "inputs": "q" * 30} for p in pairs]  # contexts cut at 25: another max_len labels them anew
  labels.unlink()
  assert run(25, pairs=cut)["newly_labeled"] == 4  # p3 fails
  assert run(50, pairs=cut)["newly_labeled"] == 4 and run(50, pairs=cut)["newly_labeled"] == 0


def test_a_second_job_on_a_held_workdir_stops_naming_the_holder(tmp_path):
  import subprocess
  import sys

  from rlaif_jax import models
  from rlaif_jax.stages.label import run_label

  workdir = tmp_path / "label"
  holder = subprocess.Popen(
    [sys.executable, "-c", f"from rlaif_jax import records\nwith records.workdir_lock({str(workdir)!r}):\n  input()"],
    stdin=subprocess.PIPE,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  try:
    lock = workdir / records.LOCK_FILE
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.exists() and lock.read_text()):
      time.sleep(0.1)
    with pytest.raises(records.WorkdirBusy, match=rf"workdir {workdir} is in use by process {holder.pid} on "):
      run_label(str(workdir), models.ModelSource(config=models.tiny(num_layers=1)), limit=2)
    assert not (workdir / "labels.jsonl").exists()  # stopped before any work
  finally:
    holder.communicate(b"\n", timeout=60)
  with records.workdir_lock(str(workdir)), records.workdir_lock(str(workdir)):  # free again; re-entrant
    pass


def test_counts_and_sizes_are_checked_before_work_starts(tmp_path):
  from rlaif_jax import models, rl, rrhf, sampling, trainer
  from rlaif_jax.stages.sft import run_sft

  source = models.ModelSource(config=models.tiny(num_layers=1))
  for bad, message in [
    ({"num_steps": 0}, "run_sft.num_steps=0: must be a positive integer"),
    ({"batch_size": -4}, "run_sft.batch_size=-4: must be a positive integer"),
    ({"batch_size": 0}, "run_sft.batch_size=0: must be a positive integer"),
    ({"max_len": 64.0}, "run_sft.max_len=64.0: must be a positive integer"),
  ]:
    with pytest.raises(ValueError, match=re.escape(message)):
      run_sft(str(tmp_path / "sft"), source, **bad)
  assert not (tmp_path / "sft").exists() or not os.listdir(tmp_path / "sft")
  with pytest.raises(ValueError, match=r"FitConfig.eval_every=-1: must be an integer >= 0"):
    trainer.FitConfig(eval_every=-1)
  with pytest.raises(ValueError, match=r"RLConfig.minibatches=0: must be a positive integer"):
    rl.RLConfig(minibatches=0)
  with pytest.raises(ValueError, match=r"SamplingConfig.max_new_tokens=-1: must be a positive integer"):
    sampling.SamplingConfig(max_new_tokens=-1)
  with pytest.raises(ValueError, match=r"Sources.max_new_tokens=0: must be a positive integer"):
    rrhf.Sources(max_new_tokens=0)


def test_a_datasets_repeated_pair_ids_are_labeled_once(tmp_path, caplog):
  from rlaif_jax.labeling import PromptConfig, jobs

  pairs = [{"id": i, "inputs": "q", "response_a": "a", "response_b": "b", "human_choice": -1} for i in "abab"]
  chosen = jobs.choose_pairs(pairs, None, "random", 0)
  assert [p["id"] for p in chosen] == ["a", "b"] and chosen[0] is pairs[0]
  assert "2 pairs repeat an earlier pair's id (first: 'a')" in caplog.text
  info = {"labeler": "stub", "prompt_variant": "base"}
  summary = jobs.label_all(_StubLabeler(100), chosen, PromptConfig(), [], str(tmp_path), 1, 0, info)
  assert summary["newly_labeled"] == 2


def test_sigterm_during_labeling_saves_the_chunk_in_progress_and_says_so(tmp_path):
  import signal

  from rlaif_jax.labeling import PromptConfig, jobs
  from rlaif_jax.trainer import Preempted

  class Killed(_StubLabeler):  # SIGTERM arrives while the first chunk is being labeled
    def label_pairs(self, pairs, config, exemplars=(), seed=0):
      if pairs[0]["id"] == "p0":
        os.kill(os.getpid(), signal.SIGTERM)
      return super().label_pairs(pairs, config, exemplars, seed)

  pairs = [{"id": f"p{i}", "inputs": "q", "response_a": "a", "response_b": "b", "human_choice": -1} for i in range(6)]
  info = {"labeler": "stub", "prompt_variant": "base"}
  with pytest.raises(Preempted, match=r"preempted by SIGTERM; saved 2 labels to .*labels.jsonl; rerun to resume"):
    jobs.label_all(Killed(100), pairs, PromptConfig(), [], str(tmp_path), 2, 0, info)
  assert [json.loads(line)["id"] for line in _lines(tmp_path / "labels.jsonl")] == ["p0", "p1"]
  assert jobs.label_all(_StubLabeler(100), pairs, PromptConfig(), [], str(tmp_path), 2, 0, info)["newly_labeled"] == 4


def test_one_line_reader_cuts_logs_back_at_the_right_byte_and_reads_gzip_alike(tmp_path):
  """records.json_lines serves the resumable records, the logs a resume cuts back and the data
  readers: offsets count a byte-order mark and blank lines, so a cut leaves whole lines."""
  rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 6)]
  body = "\ufeff" + rows[0] + "\n\n" + "\n".join(rows[1:]) + "\n" + '{"step": 6, "lo'
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(body.encode("utf-8"))
  kept = records.keep_until(str(path), "step", 3)
  assert [r["step"] for r in kept] == [1, 2, 3]
  assert path.read_bytes() == ("\ufeff" + rows[0] + "\n\n" + rows[1] + "\n" + rows[2] + "\n").encode("utf-8")
  records.append_jsonl(str(path), [{"step": 4}])  # appends after the cut, on a line of its own
  assert [r["step"] for r in records.read_jsonl(str(path))] == [1, 2, 3, 4]
  gz = tmp_path / "metrics.jsonl.gz"
  gz.write_bytes(gzip.compress(path.read_bytes()))
  plain = [(x.number, x.value) for x in records.json_lines(str(path))]
  assert [(x.number, x.value) for x in records.json_lines(str(gz))] == plain and [n for n, _ in plain] == [1, 3, 4, 5]
  path.write_text('{"step": 1}\n[1, 2]\n{"step": 2}\n')  # a line that is not an object is not cut away silently
  with pytest.raises(records.RecordsError, match=r"metrics.jsonl:2: "):
    records.keep_until(str(path), "step", 5)
