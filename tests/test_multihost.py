"""Two local processes (gloo collectives, 4 CPU devices each) agree with one process, and are
refused alike by a workdir another job holds."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from sft_helpers import comparable_optimizer, dataset, make_trainer, one_device_mesh, to_numpy

from rlaif_jax import records

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_workers(worker, port, out, env) -> list[str]:
  procs = [
    subprocess.Popen(
      [sys.executable, worker, str(i), str(port), out],
      env=env,
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return logs


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
  out = str(tmp_path / "multihost.npz")
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  worker = os.path.join(HERE, "multihost_worker.py")
  with records.workdir_lock(str(tmp_path / "busy")):  # another job's: both workers must be refused
    logs = _run_workers(worker, port, out, env)
  assert f"process 0 refused: workdir {tmp_path / 'busy'} is in use by process {os.getpid()} on" in logs[0], logs[0]
  assert "process 1 refused: workdir" in logs[1] and "(process 0 of this job says so)" in logs[1], logs[1]

  t = make_trainer(one_device_mesh(), optimizer=comparable_optimizer())
  rng = jax.random.PRNGKey(0)
  state = t.init_state(rng)
  ds = dataset()
  losses = []
  for step in range(2):
    state, metrics = t.step(state, ds.global_batch(step), rng)
    losses.append(float(metrics["loss"]))

  got = np.load(out, allow_pickle=False)
  np.testing.assert_allclose(got["losses"], losses, rtol=1e-5)
  flat = jax.tree_util.tree_flatten_with_path(to_numpy(state.params))[0]
  assert len(got.files) == len(flat) + 1
  for path, value in flat:
    np.testing.assert_allclose(got[jax.tree_util.keystr(path)], value, rtol=1e-4, atol=1e-5)
