"""Checksummed checkpoints: corrupt steps are reported by path and skipped, never restored."""

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sft_helpers import dataset, make_trainer, one_device_mesh, to_numpy

from rlaif_jax import trainer, writers
from rlaif_jax.checkpoints import MANIFEST, Checkpointer, CheckpointError, load_params, step_problem

RNG = jax.random.PRNGKey(0)


def _fit(workdir, num_steps):
  return trainer.fit(
    make_trainer(one_device_mesh()),
    dataset().batch,
    num_steps,
    workdir=workdir,
    config=trainer.FitConfig(checkpoint_every=1, keep_checkpoints=2, log_every=1, tensorboard=False, progress=False),
  )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  """A 4-step run keeping steps 3 and 4 (1 and 2 deleted by max_to_keep), and its final params."""
  workdir = str(tmp_path_factory.mktemp("pristine") / "run")
  return workdir, to_numpy(_fit(workdir, 4).params)


@pytest.fixture
def run(pristine, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(pristine[0], workdir)
  return workdir


def _largest_file(step_dir):
  files = [os.path.join(root, f) for root, _, fs in os.walk(step_dir) for f in fs if f != MANIFEST]
  return max(files, key=os.path.getsize)


def _flip_bytes(path):
  data = bytearray(open(path, "rb").read())
  for i in range(len(data) // 3, len(data) // 3 + 64):
    data[i] ^= 0x40
  open(path, "wb").write(data)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _restore(workdir):
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return make_trainer(one_device_mesh()).restore_or_init(RNG, checkpointer)
  finally:
    checkpointer.close()


@pytest.mark.slow
def test_every_saved_step_has_matching_checksums(run):
  checkpointer = Checkpointer(os.path.join(run, "checkpoints"))
  assert checkpointer.all_steps() == [3, 4]  # max_to_keep still deletes, with the manifests present
  checkpointer.close()
  for step in ("3", "4"):
    step_dir = os.path.join(run, "checkpoints", step)
    manifest = json.load(open(os.path.join(step_dir, MANIFEST)))["files"]
    assert any(name.startswith("default/") for name in manifest)
    assert step_problem(step_dir) is None


@pytest.mark.slow
def test_flipped_bytes_restore_the_previous_step_and_fit_resumes_from_it(run, pristine, caplog):
  step_dir = os.path.join(run, "checkpoints", "4")
  bad = _largest_file(step_dir)
  _flip_bytes(bad)
  with caplog.at_level(logging.WARNING):
    state = _restore(run)
  assert int(state.step) == 3
  assert f"checkpoint {step_dir} is corrupt: {os.path.relpath(bad, step_dir)} does not match its sha256" in caplog.text

  final = _fit(run, 4)  # restores step 3, trains step 4 again and replaces the corrupt folder
  jax.tree_util.tree_map(np.testing.assert_array_equal, to_numpy(final.params), pristine[1])
  assert [r["step"] for r in writers.read_jsonl_metrics(os.path.join(run, "metrics.jsonl"))][-1] == 4
  assert step_problem(step_dir) is None
  assert int(_restore(run).step) == 4


def test_truncated_file_is_one_clear_warning(run, caplog, capfd):
  step_dir = os.path.join(run, "checkpoints", "4")
  bad = _largest_file(step_dir)
  size = os.path.getsize(bad)
  _truncate(bad)
  with caplog.at_level(logging.WARNING):
    state = _restore(run)
  assert int(state.step) == 3
  rel = os.path.relpath(bad, step_dir)
  assert f"checkpoint {step_dir} is corrupt: {rel} has {size // 2} bytes, {size} expected" in caplog.text
  assert "Event loop is closed" not in caplog.text + "".join(capfd.readouterr())


def test_all_steps_corrupt_is_an_error_naming_the_directory(run):
  directory = os.path.join(run, "checkpoints")
  _flip_bytes(_largest_file(os.path.join(directory, "4")))
  os.remove(_largest_file(os.path.join(directory, "3")))
  with pytest.raises(
    CheckpointError, match=f"no usable checkpoint in {directory}: .*step 4: .*; step 3: .* is missing"
  ):
    _restore(run)


def test_non_finite_params_are_an_error_naming_the_leaf(tmp_path):
  t = make_trainer(one_device_mesh())
  state = t.init_state(RNG)
  params = dict(state.params, final_norm={"scale": state.params["final_norm"]["scale"].at[3].set(jnp.nan)})
  directory = str(tmp_path / "checkpoints")
  checkpointer = Checkpointer(directory)
  checkpointer.save(0, state.replace(params=params), force=True)
  checkpointer.close()
  assert step_problem(os.path.join(directory, "0")) is None  # saved so: the checksums match

  checkpointer = Checkpointer(directory)
  with pytest.raises(
    CheckpointError, match=f"checkpoint {directory}/0 holds NaN .* first in 'params/final_norm/scale'"
  ):
    t.restore_or_init(RNG, checkpointer)
  checkpointer.close()
  with pytest.raises(CheckpointError, match="first in 'final_norm/scale'"):
    load_params(directory, t.abstract_state(RNG).params)


def test_load_params_of_a_corrupt_step_is_a_clear_error(tmp_path):
  t = make_trainer(one_device_mesh())
  directory = str(tmp_path / "checkpoints")
  checkpointer = Checkpointer(directory)
  checkpointer.save(0, t.init_state(RNG), force=True)
  checkpointer.close()
  bad = _largest_file(os.path.join(directory, "0"))
  _flip_bytes(bad)
  rel = os.path.relpath(bad, os.path.join(directory, "0"))
  with pytest.raises(CheckpointError, match=f"checkpoint {directory}/0 is corrupt: {rel} does not match its sha256"):
    load_params(directory, t.abstract_state(RNG).params)


def test_a_step_without_checksums_is_restored_with_a_warning(run, caplog):
  step_dir = os.path.join(run, "checkpoints", "4")
  os.remove(os.path.join(step_dir, MANIFEST))  # as an older version wrote it
  with caplog.at_level(logging.WARNING):
    assert int(_restore(run).step) == 4
  assert f"checkpoint {step_dir} has no {MANIFEST}" in caplog.text
