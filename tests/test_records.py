"""Append-and-resume records: what a kill leaves behind is resumed without merging lines."""

import json

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
