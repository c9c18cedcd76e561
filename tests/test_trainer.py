import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from sft_helpers import comparable_optimizer, dataset, make_trainer, one_device_mesh, to_numpy

from rlaif_jax import losses, trainer, writers
from rlaif_jax.checkpoints import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_masked_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 7, 11)).astype(np.float32) * 5
  targets = rng.integers(0, 11, size=(3, 7))
  mask = rng.random((3, 7)) > 0.4
  loss, count = losses.masked_token_cross_entropy(logits, targets, mask)
  lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  nll = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  assert count == mask.sum()
  assert float(loss) == pytest.approx((nll * mask).sum() / mask.sum(), rel=1e-5)


def test_gradient_accumulation_equals_one_large_batch():
  ds = dataset()
  batch = ds.global_batch(0)
  rng = jax.random.PRNGKey(0)
  results = []
  for accum in (1, 4):
    t = make_trainer(one_device_mesh(), accum_steps=accum, optimizer=comparable_optimizer())
    state = t.init_state(rng)
    state, metrics = t.step(state, batch, rng)
    results.append((to_numpy(state.params), float(metrics["loss"]), float(metrics["grad_norm"])))
  (p1, l1, g1), (p4, l4, g4) = results
  assert l4 == pytest.approx(l1, rel=1e-5) and g4 == pytest.approx(g1, rel=1e-4)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p4)


def test_step_compiles_once_and_loss_falls():
  ds = dataset()
  t = make_trainer(one_device_mesh())
  rng = jax.random.PRNGKey(0)
  state = t.init_state(rng)
  losses_seen = []
  for step in range(12):
    state, metrics = t.step(state, ds.batch(step), rng)
    losses_seen.append(float(metrics["loss"]))
  assert t.traces == 1
  assert int(state.step) == 12
  assert np.mean(losses_seen[-3:]) < 0.8 * np.mean(losses_seen[:3])
  for key in ("grad_norm", "update_norm", "param_norm", "accuracy"):
    assert np.isfinite(float(metrics[key]))


def _fit(workdir, num_steps):
  t = make_trainer(one_device_mesh())
  return trainer.fit(
    t,
    dataset().batch,
    num_steps,
    workdir=workdir,
    config=trainer.FitConfig(log_every=1, tensorboard=False, progress=False),
  )


def test_resume_equals_uninterrupted_run(tmp_path):
  straight = _fit(str(tmp_path / "straight"), 6)
  _fit(str(tmp_path / "resumed"), 3)
  assert Checkpointer(str(tmp_path / "resumed" / "checkpoints")).all_steps() == [3]
  resumed = _fit(str(tmp_path / "resumed"), 6)  # restores step 3, trains 3 more
  a, b = to_numpy(straight.params), to_numpy(resumed.params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  log_a = writers.read_jsonl_metrics(str(tmp_path / "straight" / "metrics.jsonl"))
  log_b = writers.read_jsonl_metrics(str(tmp_path / "resumed" / "metrics.jsonl"))
  assert [r["step"] for r in log_b] == [1, 2, 3, 4, 5, 6]
  assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]


def test_steps_after_the_checkpoint_are_logged_once_after_a_resume(tmp_path):
  fit = lambda workdir, n: trainer.fit(  # noqa: E731
    make_trainer(one_device_mesh()), dataset().batch, n, workdir=str(workdir),
    config=trainer.FitConfig(2, keep_checkpoints=None, log_every=1, tensorboard=False, progress=False),
  )  # fmt: skip
  fit(tmp_path / "straight", 6)
  fit(tmp_path / "killed", 5)
  shutil.rmtree(tmp_path / "killed" / "checkpoints" / "5")  # killed after logging step 5, before saving it
  with open(tmp_path / "killed" / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "loss": 0.')  # and in the middle of a line
  fit(tmp_path / "killed", 6)  # resumes at step 4
  a = writers.read_jsonl_metrics(str(tmp_path / "straight" / "metrics.jsonl"))
  b = writers.read_jsonl_metrics(str(tmp_path / "killed" / "metrics.jsonl"))
  assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
  assert [r["loss"] for r in b] == [r["loss"] for r in a]


def test_keeps_last_k_checkpoints(tmp_path):
  t = make_trainer(one_device_mesh())
  trainer.fit(
    t,
    dataset().batch,
    7,
    workdir=str(tmp_path),
    config=trainer.FitConfig(checkpoint_every=2, keep_checkpoints=2, log_every=7, tensorboard=True, progress=False),
  )
  assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [6, 7]
  events = [f for _, _, fs in os.walk(tmp_path / "tensorboard") for f in fs if "tfevents" in f]
  assert events, "no TensorBoard event file"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_rerun_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  cmd = [
    sys.executable,
    "-m",
    "rlaif_jax.main",
    "--gin_file=gin/experiments/tiny_sft.gin",
    f"--gin_bindings=WORKDIR='{workdir}'",
    "--gin_bindings=NUM_STEPS=1000",
    "--gin_bindings=sft.Fit.checkpoint_every=1000",
    "--gin_bindings=sft.Fit.log_every=1",
    "--gin_bindings=run_sft.max_len=64",
    "--gin_bindings=run_sft.batch_size=4",
    "--gin_bindings=sft.Fit.eval_every=0",
  ]
  env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_FLAGS="")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 143, output[-2000:]
  assert "checkpoint saved at step" in output
  saved = Checkpointer(os.path.join(workdir, "checkpoints")).all_steps()
  assert len(saved) == 1 and 3 <= saved[0] < 1000
  last_logged = json.loads(open(metrics).readlines()[-1])["step"]
  assert saved[0] == last_logged


def test_load_params_fails_clearly_without_a_checkpoint(tmp_path):
  from rlaif_jax.checkpoints import load_params

  with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
    load_params(str(tmp_path / "nowhere"), {})
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint found"):
    load_params(str(tmp_path / "empty"), {})
