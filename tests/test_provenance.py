"""Nothing stale, nothing raw: results know what made them (content digests, checkpoint
identities and settings), settings that cannot mean anything are refused before work starts,
inputs are checked where they enter, and faults end in one line."""

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rlaif_jax import checkpoints, data, records, reward
from rlaif_jax.stages import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, timeout=300):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "rlaif_jax.main", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
  )


def _write_jsonl(path, rows) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(path)


def _error_line(out) -> str:
  """The command's one error line (and that it is the only thing it says about the error)."""
  lines = [x for x in out.stderr.splitlines() if x.startswith("rlaif_jax: error: ")]
  assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  return lines[0]


# -- content, not names --------------------------------------------------------------------------


class _ShownLabeler:
  """Labels a pair by what it shows: p_a = 0.9 when response_a holds 'good', else 0.1."""

  max_len, truncated = 100, 0

  def label_pairs(self, pairs, config, exemplars=(), seed=0):
    return [{"id": p["id"], "p_a": 0.9 if "good" in p["response_a"] else 0.1} for p in pairs]


def _pairs(flipped=False):
  rows = [
    {"id": f"p{i}", "inputs": f"q{i}", "response_a": "good", "response_b": "bad", "human_choice": -1} for i in range(3)
  ]
  if flipped:
    rows = [{**p, "response_a": p["response_b"], "response_b": p["response_a"]} for p in rows]
  return rows


def test_an_edited_pair_is_labeled_again_and_its_old_label_is_not_reused(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  from rlaif_jax.labeling import PromptConfig, jobs

  info = {"labeler": "stub", "prompt_variant": "base"}
  run = lambda pairs: jobs.label_all(_ShownLabeler(), pairs, PromptConfig(), [], str(tmp_path), 2, 0, info)  # noqa: E731
  assert run(_pairs())["newly_labeled"] == 3
  assert run(_pairs())["newly_labeled"] == 0  # unchanged: resumed
  edited = _pairs(flipped=True)[:2] + _pairs()[2:]  # same ids and count, two pairs flipped
  assert run(edited)["newly_labeled"] == 2 and "2 records were made for other contents" in caplog.text
  labels = {r["id"]: r for r in records.read_jsonl(str(tmp_path / "labels.jsonl"))}
  assert [labels[f"p{i}"]["p_a"] for i in range(3)] == [0.1, 0.1, 0.9]
  assert all(labels[p["id"]]["content"] == data.pair_digest(p) for p in edited)


def test_labels_are_joined_only_to_the_pairs_they_were_made_for(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  pairs = _pairs()
  made = [{"id": p["id"], "p_a": 0.9, "content": data.pair_digest(p)} for p in pairs]
  ai = reward.read_ai_labels(_write_jsonl(tmp_path / "labels.jsonl", made))
  assert ai.for_pairs(pairs) == {p["id"]: 0.9 for p in pairs}
  other = [{**p, "response_a": "other text"} for p in pairs]  # another file's pairs with these ids
  with pytest.raises(ValueError, match=r"labels.jsonl: 3 of its labels were made for other texts .* in mine.jsonl"):
    reward.labeled_examples(other, "ai", ai, "run_dpo", "mine.jsonl")
  assert ai.for_pairs(other, strict=False) == {}  # held-out pairs: such labels are left out, said once
  assert "3 labels were made for other texts than the pairs with their ids (first: 'p0'); left out" in caplog.text
  bare = reward.read_ai_labels(_write_jsonl(tmp_path / "bare.jsonl", [{"id": "p0", "p_a": 0.3}]))
  assert bare.for_pairs(other) == {"p0": 0.3} and "carry no digest of their pair" in caplog.text
  with pytest.raises(ValueError, match=r"run_rm: 1 of the 3 pairs of mine.jsonl have a ai label, fewer than a batch"):
    reward.labeled_examples(other, "ai", bare, "run_rm", "mine.jsonl", min_rows=2)


def test_a_checkpoints_identity_is_its_step_and_checksums(tmp_path):
  folder = tmp_path / "checkpoints"
  assert checkpoints.step_identity(str(folder)) == str(folder)  # nothing trained yet
  (folder / "2").mkdir(parents=True)
  (folder / "2" / "w").write_bytes(b"one")
  checkpoints.write_manifest(str(folder / "2"))
  first = checkpoints.step_identity(str(folder))
  assert first.startswith(f"{folder}@2:")
  (folder / "2" / "w").write_bytes(b"two")  # trained again in place
  checkpoints.write_manifest(str(folder / "2"))
  assert checkpoints.step_identity(str(folder)) not in (first, str(folder))
  (folder / "4").mkdir()
  assert checkpoints.step_identity(str(folder)).startswith(f"{folder}@4:unsealed-")  # the newest step, no manifest
  assert checkpoints.step_identity(str(folder), step=2).startswith(f"{folder}@2:")


def test_a_checksums_manifest_with_no_files_or_paths_outside_its_step_is_refused(tmp_path):
  step = tmp_path / "3"
  step.mkdir()
  (step / "checksums.json").write_text(json.dumps({"files": {}}))
  assert "lists no files" in checkpoints.step_problem(str(step))
  (step / "checksums.json").write_text(json.dumps({"files": {"../x": {"sha256": "0", "size": 0}}}))
  assert "'../x', outside its step folder" in checkpoints.step_problem(str(step))


# -- checkpoints know their settings -------------------------------------------------------------


def test_checkpoints_trained_with_other_settings_are_moved_aside(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  folder = str(tmp_path / "checkpoints")
  settings = {"settings": {"lr": "0.1"}, "models": {}, "files": {}}
  assert not checkpoints.claim(folder, settings)
  os.makedirs(os.path.join(folder, "6"))
  assert not checkpoints.claim(folder, settings)  # the same settings: resumed
  assert os.path.isdir(os.path.join(folder, "6"))
  assert checkpoints.claim(folder, {**settings, "settings": {"lr": "0.5"}})
  assert "was trained with other settings (settings.lr: '0.1' -> '0.5'): moved it to checkpoints.stale-1" in caplog.text
  assert not os.path.exists(os.path.join(folder, "6")) and os.path.isdir(folder + ".stale-1/6")
  os.remove(os.path.join(folder, checkpoints.SETTINGS_FILE))  # an older version's folder: adopted
  assert not checkpoints.claim(folder, settings)
  checkpoints.claim(folder, {**settings, "stage": "run_sft"})  # moved aside: a stage's own from here on
  with pytest.raises(checkpoints.CheckpointError, match=r"checkpoints that run_sft trained; run_dpo would take"):
    checkpoints.claim(folder, {**settings, "stage": "run_dpo"})


def test_what_a_stage_depends_on_leaves_out_how_it_runs(tmp_path):
  from rlaif_jax import models, optimizers

  labels = _write_jsonl(tmp_path / "labels.jsonl", [{"id": "a", "p_a": 0.5}])
  source = models.ModelSource(config=models.tiny(num_layers=1), checkpoint=str(tmp_path / "sft"))
  given = {"policy": source, "ai_labels": labels, "beta": 0.1, "optimizer": optimizers.adamw(1e-3)}
  made = base.made_with({**given, "num_steps": 5, "mesh_shape": {"data": 2}, "log_every": 1})
  assert made == base.made_with({**given, "num_steps": 50, "mesh_shape": None, "log_every": 9})
  assert made["models"] == {"policy": source.identity} and list(made["files"]) == [f"ai_labels={labels}"]
  assert made != base.made_with({**given, "beta": 0.2})
  _write_jsonl(tmp_path / "labels.jsonl", [{"id": "a", "p_a": 0.6}])  # labeled again
  assert made != base.made_with(given)
  described = {"beta": "0.1", "workdir": "'x'"}
  assert base.made_with(given, described)["settings"] == {"beta": "0.1"}  # main's description, run-only ones out


def test_a_finished_stage_runs_again_when_a_file_it_read_changed(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  """Stale case 1 inside a pipeline: stages.json records each entry's inputs by content, so a
  pairs file edited in place runs the label stage again (which labels the edited pairs anew)."""
  import gin

  from rlaif_jax import gin_setup, pipeline

  pairs = _write_jsonl(
    tmp_path / "pairs.jsonl", [{"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No."} for i in range(2)]
  )
  bindings = [f"WORKDIR='{tmp_path}/label'", f"run.workdir='{tmp_path}'", f"run_label.task='{pairs}'"]
  bindings += ["run_label.exemplars_file=None", "run_label.max_len=1024", "models.preset.num_layers=1"]
  caplog.set_level(logging.INFO)
  gin.clear_config()
  try:
    gin_setup.parse_gin(["gin/experiments/tiny_label.gin"], bindings, [ROOT])
    assert pipeline.run()["label"]["newly_labeled"] == 2
    caplog.clear()
    assert (
      pipeline.run()["label"]["newly_labeled"] == 2 and "finished in an earlier run with these settings" in caplog.text
    )
    _write_jsonl(
      pairs,
      [{"prompt": "Q0?", "chosen": "Yes.", "rejected": "No."}, {"prompt": "Q1?", "chosen": "Sure.", "rejected": "No."}],
    )
    caplog.clear()
    assert pipeline.run()["label"]["newly_labeled"] == 1
    assert f"settings changed (inputs.files.task={pairs}): running it again" in caplog.text
  finally:
    gin.clear_config()


# -- settings that cannot mean anything ----------------------------------------------------------


@pytest.mark.parametrize(
  "workdir, message",
  [
    ("", "must name a folder"),
    ("/", "the filesystem's root"),
    ("//runs/x", "starting with '//'"),
    ("FILE", "is a file"),
  ],
)
def test_a_workdir_that_cannot_be_a_jobs_folder_is_refused_before_anything_is_written(
  tmp_path, monkeypatch, workdir, message
):
  from rlaif_jax import models
  from rlaif_jax.stages.label import run_label

  monkeypatch.chdir(tmp_path)  # where a relative path would land
  if workdir == "FILE":
    open("file", "w").close()
    workdir = "file"
  root = sorted(os.listdir("/"))
  with pytest.raises(ValueError, match=re.escape(message)):
    run_label(workdir, models.ModelSource(config=models.tiny(num_layers=1)), limit=2)
  if workdir == "file":  # a WORKDIR that is a file, under '{WORKDIR}/sft'
    with pytest.raises(ValueError, match=r"'file/sft' is inside .*file, which is a file"):
      base.check_workdir("run_sft.workdir", "file/sft")
  assert os.listdir(tmp_path) == (["file"] if workdir == "file" else []) and sorted(os.listdir("/")) == root


def test_an_empty_workdir_macro_is_refused_though_its_folders_would_be_absolute(tmp_path):
  import gin

  from rlaif_jax import gin_setup

  gin.clear_config()
  try:
    gin_setup.parse_gin(["gin/experiments/tiny_dpo.gin"], ["WORKDIR=''"], [ROOT])  # '{WORKDIR}/sft' is now '/sft'
    with pytest.raises(ValueError, match=r"WORKDIR='': must name a folder"):
      gin_setup.check_workdir_macro()
  finally:
    gin.clear_config()


def test_sampling_settings_outside_their_range_are_refused():
  from rlaif_jax import rrhf, sampling
  from rlaif_jax.labeling import PromptConfig

  for bad, message in [
    ({"temperature": -0.1}, "temperature=-0.1: must be a number >= 0"),
    ({"temperature": float("nan")}, "temperature=nan: must be a number >= 0"),
    ({"top_p": 0.0}, "top_p=0.0: must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p=1.5: must be in (0, 1]"),
    ({"top_k": -1}, "top_k=-1: must be an integer >= 0"),
  ]:
    with pytest.raises(ValueError, match=re.escape(f"SamplingConfig.{message}")):
      sampling.SamplingConfig(**bad)
  with pytest.raises(ValueError, match=re.escape("Sources.temperature=-1.0")):
    rrhf.Sources(policy_temperatures=(0.7, -1.0))
  with pytest.raises(ValueError, match=re.escape("PromptConfig.cot_temperature=-0.5")):
    PromptConfig(cot_temperature=-0.5)


def test_a_binding_in_a_scope_nothing_runs_in_or_a_misspelt_macro_in_a_file_is_refused(tmp_path):
  import gin

  from rlaif_jax import gin_setup

  gin.clear_config()
  try:
    gin_setup.parse_gin(["gin/experiments/tiny_dpo.gin"], ["dpo/optimizers.adamw.learning_rate=0.1"], [ROOT])
    gin_setup.check_scopes(["dpo/optimizers.adamw.learning_rate=0.1"], ["sft", "label", "dpo"])  # referenced: used
    with pytest.raises(ValueError, match=r"'dop/run_dpo.beta=0.2': no stage runs in the scope 'dop'; did you mean dpo"):
      gin_setup.check_scopes(["dop/run_dpo.beta=0.2"], ["sft", "label", "dpo"])
    gin.clear_config()
    mine = tmp_path / "mine.gin"
    mine.write_text("include 'gin/experiments/tiny_sft.gin'\nNUM_STEP = 4\n")
    with pytest.raises(ValueError, match=r"mine.gin:2: no setting uses the macro NUM_STEP; did you mean NUM_STEPS"):
      gin_setup.parse_gin([str(mine)], [], [ROOT])
  finally:
    gin.clear_config()


def test_two_stages_in_one_workdir_are_refused_naming_both():
  from rlaif_jax import pipeline

  with pytest.raises(ValueError, match=r"stages sft and rlhf/rl both have workdir 'runs/x/'"):
    pipeline.check_distinct_workdirs(
      {"sft": {"workdir": "runs/x"}, "label": {"workdir": "runs/y"}, "rlhf/rl": {"workdir": "runs/x/"}}
    )


# -- inputs validated where they enter -----------------------------------------------------------


def test_pairs_files_are_read_as_text_and_what_is_not_a_file_of_records_is_refused(tmp_path, monkeypatch):
  row = {"id": "a", "input": "q", "response_a": "x", "response_b": "y", "human_choice": 0}
  bom = tmp_path / "bom.jsonl"
  bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\n")
  assert [p["id"] for p in data.load_pairs(str(bom), "train")] == ["a"]
  with pytest.raises(data.DataError, match=r"not a regular file"):
    data.load_pairs(str(tmp_path), "train")  # a folder
  fifo = tmp_path / "pipe.jsonl"
  os.mkfifo(fifo)
  with pytest.raises(data.DataError, match=r"pipe.jsonl: not a regular file"):  # refused without blocking on it
    data.load_pairs(str(fifo), "train")
  monkeypatch.setattr(data.io, "MAX_LINE_BYTES", 120)
  long = _write_jsonl(tmp_path / "long.jsonl", [row, {**row, "id": "b", "response_a": "x" * 100}])
  with pytest.raises(data.DataError, match=r"long.jsonl:2: a line longer than"):
    data.load_pairs(long, "train")


@pytest.mark.parametrize("p_a", [float("nan"), float("inf"), -0.1, 1.5, "0.5", True, None])
def test_an_ai_label_that_is_not_a_probability_is_an_error_naming_file_line_and_field(tmp_path, p_a):
  path = tmp_path / "labels.jsonl"
  path.write_text(json.dumps({"id": "a", "p_a": 0.5}) + "\n" + json.dumps({"id": "b", "p_a": p_a}) + "\n")
  with pytest.raises(data.DataError, match=r"labels.jsonl:2: field 'p_a'"):
    reward.read_ai_labels(str(path))


def test_a_label_without_an_id_is_an_error(tmp_path):
  path = tmp_path / "labels.jsonl"
  path.write_text(json.dumps({"p_a": 0.5}) + "\n")
  with pytest.raises(data.DataError, match=r"labels.jsonl:1: field 'id': missing"):
    reward.read_ai_labels(str(path))


def test_a_label_job_where_every_pair_is_too_long_fails(tmp_path):
  from rlaif_jax.labeling import PromptConfig, jobs

  class TooLong(_ShownLabeler):
    def label_pairs(self, pairs, config, exemplars=(), seed=0):
      return [{"id": p["id"], "p_a": None, "error": "too long for max_len 100"} for p in pairs]

  info = {"labeler": "stub", "prompt_variant": "base"}
  with pytest.raises(ValueError, match=r"none of the 3 pairs could be labeled \(too long for max_len 100\)"):
    jobs.label_all(TooLong(), _pairs(), PromptConfig(), [], str(tmp_path), 2, 0, info)


# -- faults end in one line ----------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", '{"sft": ', "\x00\x01"])
def test_a_corrupt_or_empty_json_file_is_an_error_naming_it(tmp_path, content):
  path = tmp_path / "stages.json"
  path.write_text(content)
  with pytest.raises(records.RecordsError, match=rf"{re.escape(str(path))}: not a JSON file .* restore it, or move it"):
    records.read_json(str(path))


def test_state_files_of_the_wrong_shape_or_missing_name_the_file(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  import gin

  from rlaif_jax import gin_setup, pipeline, rl
  from rlaif_jax.rl.loop import RolloutLoop

  (tmp_path / "stages.json").write_text("[1, 2]")
  gin.clear_config()
  try:
    gin_setup.parse_gin(
      ["gin/runs/data.gin"], [f"run.workdir='{tmp_path}'", f"run_data_report.workdir='{tmp_path}'"], [ROOT]
    )
    with pytest.raises(records.RecordsError, match=r"stages.json does not hold \{entry: "):
      pipeline.run()
  finally:
    gin.clear_config()
  state = tmp_path / "rl_state.json"
  loop = type("Loop", (), {"state_path": str(state), "workdir": str(tmp_path), "config": rl.RLConfig()})()
  state.write_text(json.dumps({"2": 5}))
  with pytest.raises(checkpoints.CheckpointError, match=r"rl_state.json does not hold"):
    RolloutLoop._saved_state(loop, 2)
  state.write_text(json.dumps({"2": {"kl_coef": 0.1}}))
  assert RolloutLoop._saved_state(loop, 2) == {"kl_coef": 0.1} and RolloutLoop._saved_state(loop, 0) == {}
  assert RolloutLoop._saved_state(loop, 4) == {} and "has no entry for step 4 (deleted?)" in caplog.text
  loop.config = rl.RLConfig(target_kl=6.0)  # an adaptive KL coefficient would restart silently
  with pytest.raises(checkpoints.CheckpointError, match=r"no entry for step 4 .* adaptive KL coefficient"):
    RolloutLoop._saved_state(loop, 4)


def test_a_binding_gin_cannot_parse_is_named_with_a_suggestion():
  """A misspelt setting gets the closest name; a setting that lives in a config the stage takes
  (its cadence, its sampling) gets the binding that reaches it."""
  import gin

  from rlaif_jax import gin_setup

  for binding, message in [
    (
      "run_sft.batchsize=4",
      "--gin_bindings='run_sft.batchsize=4': run_sft has no setting 'batchsize'; did you mean batch_size?",
    ),
    # a field of a config the stage takes: named where the gin files bind that config
    (
      "run_sft.checkpoint_every=5",
      "--gin_bindings='run_sft.checkpoint_every=5': run_sft has no setting 'checkpoint_every'; "
      "it is sft.Fit.checkpoint_every",
    ),
    (
      "run_sft.temperature=0",
      "--gin_bindings='run_sft.temperature=0': run_sft has no setting 'temperature'; "
      "it is sft_samples/sampling.SamplingConfig.temperature",
    ),
    ("run_sft.batch_size=(2", "--gin_bindings='run_sft.batch_size=(2': "),
    ("run_sft.num_steps==", "--gin_bindings='run_sft.num_steps==': Couldn't parse"),
  ]:
    gin.clear_config()
    try:
      with pytest.raises(ValueError, match=re.escape(f"bad gin configuration: {message}")):
        gin_setup.parse_gin(["gin/experiments/tiny_sft.gin"], [binding], [ROOT])
    finally:
      gin.clear_config()


def test_a_pipeline_rerun_moves_records_of_other_settings_aside_and_a_standalone_one_refuses(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  path = str(tmp_path / "labels.jsonl")
  with records.Records(path, {"labeler": "a"}) as out:
    out.append([{"id": "x", "p_a": 0.5}])
  with pytest.raises(records.RecordsError, match=r"labeler: 'a' -> 'b'"):
    records.Records(path, {"labeler": "b"})
  with records.replacing_stale():
    assert records.Records(path, {"labeler": "b"}).done == set()
  assert "labeler: 'a' -> 'b'); moved it to " in caplog.text and os.path.exists(tmp_path / "labels.stale-1.jsonl")
  assert not os.path.exists(path) and os.path.exists(tmp_path / "labels.stale-1.made_with.json")
  assert list(json.loads((tmp_path / "labels.made_with.json").read_text()).values()) == [{"labeler": "b"}]


def test_checkpoints_without_their_settings_are_resumed_with_a_warning(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  folder = tmp_path / "checkpoints"
  (folder / "3").mkdir(parents=True)  # an older version's folder, or its made_with.json deleted
  settings = {"settings": {"lr": "0.1"}, "models": {}, "files": {}}
  assert not checkpoints.claim(str(folder), settings) and (folder / "3").is_dir()
  assert "has checkpoints but no made_with.json" in caplog.text and "cannot be checked" in caplog.text
  assert json.loads((folder / "made_with.json").read_text())["settings"]["adopted"] is True


def test_errors_end_in_one_line_naming_the_file():
  from rlaif_jax import errors

  full = OSError(errno.ENOSPC, "No space left on device", "runs/x/labels.jsonl")
  assert errors.error_line(full).startswith("no space left on the disk writing runs/x/labels.jsonl; free space")
  readonly = OSError(errno.EROFS, "Read-only file system", b"/ro/x")
  assert "cannot write /ro/x (read-only file system)" in errors.error_line(readonly)
  passed_on = OSError("[Errno 30] Read-only file system: '/ro/y'\n  In call to configurable 'run' (<function run>)")
  assert "cannot write /ro/y (read-only file system)" in errors.error_line(passed_on)  # as gin re-raises it
  denied = OSError(errno.EACCES, "Permission denied", "/data/pairs.jsonl")
  assert errors.error_line(denied).startswith("/data/pairs.jsonl: permission denied")
  oom = ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB")
  assert "disk" not in errors.error_line(oom)  # XLA's out of memory is not a full disk
  gin_said = ValueError("bad value\n  In call to configurable 'run_label' (<function run_label at 0x7f>)")
  assert errors.error_line(gin_said) == "bad value"
  tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file "/r/ck/2.tmp/": x')
  assert errors.error_line(tensorstore).startswith(
    "no space left on the disk writing /r/ck/2.tmp/; free space and rerun"
  )


def test_a_full_disk_met_by_a_checkpoint_write_names_the_step_folder(tmp_path, monkeypatch):
  """tensorstore's thread pool reports a full disk without a path (as CI met it): the step folder
  being written is named, whether the save itself or the wait for it fails; other errors pass."""
  from rlaif_jax import errors

  ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"))
  state = {"w": np.zeros(3, np.float32)}

  def full(*args, **kwargs):
    raise ValueError("INTERNAL: Error writing local file: No space left on device [source locations='x']")

  monkeypatch.setattr(ckpt.manager, "save", full)
  with pytest.raises(OSError) as caught:
    ckpt.save(2, state, force=True)
  want = f"no space left on the disk writing {tmp_path}/checkpoints/2; free space"
  assert errors.error_line(caught.value).startswith(want)
  monkeypatch.undo()
  assert ckpt.save(3, state, force=True)
  monkeypatch.setattr(ckpt.manager, "wait_until_finished", full)
  with pytest.raises(OSError, match=f"'{tmp_path}/checkpoints/3'"):
    ckpt.wait()
  monkeypatch.setattr(ckpt.manager, "wait_until_finished", lambda: (_ for _ in ()).throw(ValueError("other")))
  with pytest.raises(ValueError, match="^other$"):
    ckpt.wait()
  monkeypatch.undo()
  # orbax raises an earlier asynchronous save's failure from whichever call comes next (as a loaded
  # CI machine met it): the next save names the step still being written
  assert ckpt.save(4, state, force=True)
  monkeypatch.setattr(ckpt.manager, "is_saving_in_progress", full)
  monkeypatch.setattr(ckpt.manager, "all_steps", full)
  with pytest.raises(OSError, match=f"'{tmp_path}/checkpoints/4'"):
    ckpt.save(5, state, force=True)
  monkeypatch.undo()
  ckpt.close()


def test_a_whole_file_that_cannot_be_written_leaves_nothing_behind(tmp_path, monkeypatch):
  path = tmp_path / "summary.json"
  path.write_text("{}")

  def full(*args):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "replace", full)
  with pytest.raises(OSError):
    records.write_json(str(path), {"a": 1})
  assert sorted(os.listdir(tmp_path)) == ["summary.json"] and path.read_text() == "{}"


def test_a_gin_include_loop_ends_in_one_line(tmp_path):
  import gin

  from rlaif_jax import gin_setup

  loop_a, loop_b = tmp_path / "a.gin", tmp_path / "b.gin"
  loop_a.write_text(f"include '{loop_b}'\n")
  loop_b.write_text(f"include '{loop_a}'\n")
  gin.clear_config()
  try:
    with pytest.raises(ValueError, match=r"a.gin'\] include each other in a loop"):
      gin_setup.parse_gin([str(loop_a)], [], [ROOT])
  finally:
    gin.clear_config()


@pytest.fixture
def small_disk(tmp_path):
  """A 3 MB tmpfs (a full disk within a checkpoint or two of a tiny model), where mounting one is
  allowed; the test is skipped elsewhere."""
  where = tmp_path / "disk"
  where.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)], capture_output=True).returncode:
    pytest.skip("cannot mount a small tmpfs here")
  try:
    yield where
  finally:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.slow
def test_a_disk_that_fills_or_turns_read_only_ends_the_job_in_one_line_and_it_resumes(tmp_path, small_disk):
  sft = ["--gin_file=gin/experiments/tiny_sft.gin", "--gin_bindings=NUM_STEPS=4", "--gin_bindings=run_sft.batch_size=2"]
  sft += ["--gin_bindings=sft.Fit.checkpoint_every=1", "--gin_bindings=sft.Fit.keep_checkpoints=10"]
  sft += ["--gin_bindings=run_sft.eval_split=None", "--gin_bindings=run_sft.num_samples=0"]
  out = _cli(*sft, f"--gin_bindings=WORKDIR='{small_disk}/sft'")
  assert out.returncode == 2 and len(out.stderr.splitlines()) < 15, out.stderr[-3000:]  # no flood
  assert f"no space left on the disk writing {small_disk}/sft/checkpoints/" in _error_line(out)
  shutil.copytree(small_disk / "sft", tmp_path / "sft")  # space freed: the job resumes from a complete step
  out = _cli(*sft, f"--gin_bindings=WORKDIR='{tmp_path}/sft'")
  assert out.returncode == 0 and re.search(r"restored step [1-9] from", out.stderr) and "steps: 4" in out.stdout
  subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
  out = _cli(*sft, f"--gin_bindings=WORKDIR='{small_disk}/other'")
  assert out.returncode == 2 and f"cannot write {small_disk}/other (read-only file system)" in _error_line(out)
  out = _cli(*sft, f"--gin_bindings=WORKDIR='{small_disk}/other'", "--verbose")
  assert "Traceback" in out.stderr  # the full story behind --verbose


# -- the four stale cases, end to end through the command line -----------------------------------


def _label_pairs_args(workdir, pairs):
  return [
    "--gin_file=gin/experiments/tiny_label.gin",
    f"--gin_bindings=WORKDIR='{workdir}'",
    f"--gin_bindings=run_label.task='{pairs}'",
    "--gin_bindings=run_label.exemplars_file=None",
    "--gin_bindings=run_label.max_len=1024",
  ]


@pytest.mark.slow
def test_an_edited_pairs_file_is_labeled_again_and_labels_of_another_file_are_refused(tmp_path):
  """Stale cases 1 and 2: a pairs file edited in place (chosen and rejected flipped) is labeled
  anew, not reported from the old labels; DPO given labels made for another file with the same
  default ids (folder/file:line) stops, naming both files."""
  rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i} kindly.", "rejected": f"No {i}."} for i in range(4)]
  pairs = _write_jsonl(tmp_path / "mine" / "pairs.jsonl", rows)
  out = _cli(*_label_pairs_args(tmp_path / "label", pairs))
  assert out.returncode == 0, out.stderr[-3000:]
  before = {r["id"]: r["p_a"] for r in records.read_jsonl(str(tmp_path / "label" / "labels.jsonl"))}
  _write_jsonl(pairs, [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows])
  out = _cli(*_label_pairs_args(tmp_path / "label", pairs))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "newly_labeled: 4" in out.stdout and "4 records were made for other contents" in out.stderr
  after = {r["id"]: r["p_a"] for r in records.read_jsonl(str(tmp_path / "label" / "labels.jsonl"))}
  assert after.keys() == before.keys() and after != before
  other = _write_jsonl(tmp_path / "elsewhere" / "mine" / "pairs.jsonl", [{**r, "prompt": "Other?"} for r in rows])
  labels = tmp_path / "label" / "labels.jsonl"
  out = _cli(
    "--gin_file=gin/experiments/tiny_dpo.gin",
    "--stages=dpo",
    f"--gin_bindings=WORKDIR='{tmp_path}/run'",
    f"--gin_bindings=run_dpo.task='{other}'",
    "--gin_bindings=run_dpo.eval_split=None",
    f"--gin_bindings=AI_LABELS='{labels}'",
    "--gin_bindings=SFT=None",  # a random init: the labels are refused before any model loads
    "--gin_bindings=run_dpo.batch_size=2",
  )
  assert out.returncode == 2
  line = _error_line(out)
  assert (
    f"{labels}: 3 of its labels were made for other texts than the pairs with their ids in {other}" in line
  )  # 1 held out
  assert not os.path.exists(tmp_path / "run" / "dpo" / "checkpoints")


@pytest.mark.slow
def test_a_pipeline_rerun_with_other_settings_trains_anew_and_never_reuses_what_old_weights_made(tmp_path):
  """Stale cases 3 and 4 on the SFT -> label -> DPO pipeline: rerun with another learning rate,
  SFT moves its checkpoints aside and trains anew (not "restored the final step"); the label
  stage, running again, moves the labels the old weights made aside, naming the change, and
  labels anew; DPO (whose start and labels changed) trains anew too. (Outside a pipeline rerun
  such labels are refused: test_a_pipeline_rerun_moves_records_of_other_settings_aside_...)"""
  args = [
    "--gin_file=gin/experiments/tiny_dpo.gin",
    f"--gin_bindings=WORKDIR='{tmp_path}'",
    f"--gin_bindings=run.workdir='{tmp_path}'",  # stages.json: a rerun knows what ran before
    "--gin_bindings=NUM_STEPS=2",
    "--gin_bindings=DPO_STEPS=2",
    *(
      "--gin_bindings=run_sft.batch_size=2",
      "--gin_bindings=run_sft.max_len=64",
      "--gin_bindings=run_sft.eval_split=None",
    ),
    *("--gin_bindings=run_sft.num_samples=0", "--gin_bindings=sft.Fit.tensorboard=False"),
    *(
      "--gin_bindings=run_label.limit=2",
      "--gin_bindings=run_label.max_len=2048",
      "--gin_bindings=run_label.batch_size=2",
    ),
    *(
      "--gin_bindings=run_dpo.batch_size=2",
      "--gin_bindings=run_dpo.max_len=64",
      "--gin_bindings=run_dpo.kl_prompts=0",
    ),
    *("--gin_bindings=run_dpo.eval_split=None", "--gin_bindings=dpo.Fit.tensorboard=False"),
  ]
  out = _cli(*args)
  assert out.returncode == 0, out.stderr[-3000:]
  sft_first = checkpoints.step_identity(str(tmp_path / "sft" / "checkpoints"))
  out = _cli(*args, "--gin_bindings=optimizers.warmup_cosine.peak_value=0.5")
  assert out.returncode == 0, out.stderr[-3000:]
  assert (
    "sft/checkpoints was trained with other settings (settings.learning_rate.value.peak_value: '0.002' -> '0.5'"
    in (" ".join(out.stderr.split()))
  )
  assert "restored step 2 from" not in out.stderr and os.path.isdir(tmp_path / "sft" / "checkpoints.stale-1" / "2")
  sft_now = checkpoints.step_identity(str(tmp_path / "sft" / "checkpoints"))
  assert sft_now.split("@")[1] != sft_first.split("@")[1]  # step 2 again, other weights
  label = tmp_path / "label"
  assert "stage label: finished in an earlier run, but settings changed (inputs.models.labeler)" in out.stderr
  assert f"(labeler: 'checkpoint:{sft_first}' -> 'checkpoint:{sft_now}'); moved it to " in out.stderr
  assert os.path.exists(label / "labels.stale-1.jsonl")  # the old labeler's labels, kept aside
  made = json.loads((label / "labels.made_with.json").read_text())
  assert [m["labeler"] for m in made.values()] == [f"checkpoint:{sft_now}"]  # labeled anew by the new weights
  assert re.search(
    r"dpo/checkpoints was trained with other settings \(files.ai_labels=\S+: '\w+' -> '\w+'; models.policy", out.stderr
  )
  assert "steps: 2" in out.stdout.split("== dpo ==")[1] and os.path.isdir(tmp_path / "dpo" / "checkpoints.stale-1")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_gguf_whose_tokenizer_cannot_load_is_an_error_naming_the_file(tmp_path, kind):
  import gguf
  import numpy as np

  from rlaif_jax.models import loading

  path = str(tmp_path / "broken.gguf")
  writer = gguf.GGUFWriter(path, "llama")
  writer.add_tokenizer_model(kind)
  writer.add_token_list(["a", "b"])
  if kind == "gpt2":
    writer.add_token_merges(["x y"])  # a merge of tokens the vocabulary lacks
  else:
    writer.add_token_scores([0.0, 0.0])
  writer.add_token_types([1, 1])
  writer.add_eos_token_id(0)  # also the padding id: SentencePiece's specials collide
  writer.add_tensor("unused", np.zeros(1, np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(
    checkpoints.CheckpointError, match=r"broken.gguf: its (BPE|SentencePiece) tokenizer cannot be loaded"
  ):
    loading.gguf_tokenizer(path)
