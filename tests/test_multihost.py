"""Two local processes (gloo collectives) agree with one process: an SFT step on 8 devices, and the
whole default pipeline, shrunk, on 4 (killed and resumed, then rerun); both are refused alike by a
workdir another job holds."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from pipeline_outputs import SHRUNK_SFT, assert_same, outputs
from sft_helpers import (
  comparable_optimizer,
  dataset,
  export_tiny,
  make_lora_trainer,
  make_trainer,
  one_device_mesh,
  to_numpy,
)

from rlaif_jax import records

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


_LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
  """A failed test kills what it launched: a process left waiting for a dead peer would hold
  the CPUs (and the run) after the test has ended."""
  yield
  while _LAUNCHED:
    p = _LAUNCHED.pop()
    if p.poll() is None:
      p.kill()
      p.wait()


# A Python child that asks Linux to SIGKILL it when the test's process ends (PR_SET_PDEATHSIG, kept
# across exec), also when that process runs no teardown: pytest-timeout's thread method ends it
# with os._exit, or it crashes. Set in the child itself: a preexec_fn would make subprocess fork
# a multithreaded JAX process.
_DIE_WITH_PARENT = "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); os.execv(sys.executable, sys.argv[1:])"


def _launch(args, **kwargs) -> subprocess.Popen:
  if sys.platform.startswith("linux") and args[0] == sys.executable:
    args = [sys.executable, "-c", _DIE_WITH_PARENT, *args]
  p = subprocess.Popen(args, cwd=ROOT, text=True, **kwargs)
  _LAUNCHED.append(p)
  return p


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_workers(worker, port, out, env) -> list[str]:
  procs = [
    _launch([sys.executable, worker, str(i), str(port), out], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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

  flat = jax.tree_util.tree_flatten_with_path(to_numpy(state.params))[0]
  lora_trainer, initial = make_lora_trainer(one_device_mesh())  # LoRA: the adapters alone train
  state = lora_trainer.init_state(rng, initial)
  for step in range(2):
    state, metrics = lora_trainer.step(state, ds.global_batch(step), rng)
    losses.append(float(metrics["loss"]))
  flat += [(("lora", *path), value) for path, value in jax.tree_util.tree_flatten_with_path(to_numpy(state.params))[0]]

  got = np.load(out, allow_pickle=False)
  np.testing.assert_allclose(got["losses"], losses, rtol=1e-5)
  assert len(got.files) == len(flat) + 1
  for path, value in flat:
    key = "lora" + jax.tree_util.keystr(path[1:]) if path[0] == "lora" else jax.tree_util.keystr(path)
    np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5)
  # The Hugging Face folder process 0 wrote from parameters sharded over both: the one-process files
  export_tiny(str(tmp_path / "hf_one"))
  names = sorted(os.listdir(tmp_path / "hf_one"))
  assert sorted(os.listdir(tmp_path / "hf")) == names and "model.safetensors.index.json" in names
  for name in names:
    assert (tmp_path / "hf" / name).read_bytes() == (tmp_path / "hf_one" / name).read_bytes(), name


# The harmless-dialogue pipeline (the paper's third task), so this run is also its end-to-end check.
PIPELINE = "gin/experiments/tiny_harmless_pipeline.gin"
PIPELINE_STAGES = (
  "sft,judge_sft/sft,candidates,ai_labels/label,rm_ai/rm,rm_human/rm,rlaif/rl,rlhf/rl,direct/rl,dpo,oaif/rl,rrhf,"
  "evaluate,report"
)
MESH = "{'fsdp': 2, 'tensor': 2}"  # fsdp across the two processes, tensor within each
PIPELINE_SMALL = [
  *SHRUNK_SFT,
  "run_candidates.limit=16",
  "run_candidates.batch_size=8",
  "ai_labels/run_label.limit=16",
  "run_label.batch_size=8",
  "RM_STEPS=10",
  "rm.Fit.eval_every=10",
  "run_rm.max_len=256",
  "RL_ITERATIONS=2",
  "run_rl.checkpoint_every=1",
  "run_rl.batch_size=8",
  "run_rl.max_prompt_len=192",
  "rl.RolloutSampling.max_new_tokens=16",
  "DPO_STEPS=2",
  "dpo.Fit.eval_every=2",
  "run_dpo.max_len=256",
  "run_dpo.batch_size=8",
  "run_dpo.kl_prompts=4",
  "run_dpo.kl_max_new_tokens=8",
  "RRHF_STEPS=2",
  "run_rrhf.limit=8",
  "run_rrhf.max_len=256",
  "run_evaluate.limit=8",
  "run_evaluate.harmless_limit=8",
  "run_evaluate.max_prompt_len=192",
  "run_evaluate.batch_size=8",
  "evaluate/sampling.SamplingConfig.max_new_tokens=16",
  f"MESH={MESH}",
]


def _pipeline(workdir, processes: int, port: int = 0) -> list[subprocess.Popen]:
  """The default pipeline, shrunk, on 4 CPU devices: one process of 4 or two of 2."""
  args = [sys.executable, "-m", "rlaif_jax.main", f"--gin_file={PIPELINE}"]
  args += [f"--stages={PIPELINE_STAGES}", f"--gin_bindings=WORKDIR='{workdir}'"]
  args += [f"--gin_bindings={b}" for b in PIPELINE_SMALL]
  # The harness's compilation cache (conftest) comes with os.environ: stages that compile the same
  # programs (the three RL stages, the two RMs, the two SFTs) and the resumed run read them back.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={4 // processes}")
  if processes == 1:
    launches = [args]
  else:
    launches = [
      args + ["--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]
      for i in range(2)
    ]
  return [_launch(a, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for a in launches]


def _finish(procs, timeout=900) -> list[tuple[str, str]]:
  done = [p.communicate(timeout=timeout) for p in procs]
  for p, (_, err) in zip(procs, done):
    assert p.returncode == 0, err[-3000:]
  return done


@pytest.mark.slow
def test_pipeline_on_two_processes_equals_one_process_resumes_and_skips(tmp_path):
  """The README's pipeline end to end, on the harmless-dialogue task: every stage (DPO on the AI
  labels and OAIF among them) on a mesh that spans two processes (fsdp across them), SIGKILLed in
  the middle of RL and resumed by both, equals a one-process run (labels, RM, curves, OAIF's labels,
  generations, win and harmless rates, report); a rerun skips every finished stage and rewrites
  nothing. (The suite's one pipeline run: TL;DR differs only in its task macros, whose pieces have
  tests of their own.)"""
  one, two = tmp_path / "one", tmp_path / "two"
  reference = _pipeline(one, 1)
  interrupted = _pipeline(two, 2, _free_port())
  ckpt = two / "rl_rlaif" / "checkpoints"
  deadline = time.time() + 500
  while not (ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())):
    for p in interrupted:
      assert p.poll() is None, p.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  for p in interrupted:  # no chance to save: RL is in its second iteration
    p.send_signal(signal.SIGKILL)
    p.wait()
  assert list(json.load(open(two / "stages.json")))[-1] == "rm_human/rm"
  (out, err), _ = _finish(_pipeline(two, 2, _free_port()))
  assert "stage rm_human/rm: finished in an earlier run" in err and "restored" in err
  assert "Report:" in out
  _finish(reference)
  assert_same(outputs(one), outputs(two))
  for stage in ("sft", "ai_labels", "rm_ai", "rl_rlaif", "dpo", "rl_oaif", "rrhf", "evaluate"):
    runtime = json.load(open(two / stage / "summary.json"))["runtime"]
    assert (runtime["processes"], runtime["devices"], runtime["mesh"]) == (2, 4, {"data": 1, "fsdp": 2, "tensor": 2})
  assert _report(two) == _report(one)
  # the harmless task end to end: every policy's harmless rate on the harmless prompts, with its interval
  ev = json.load(open(two / "evaluate" / "eval.json"))
  assert (ev["task"], ev["harmless_task"]) == ("hh_harmless_prompts", "hh_harmless_prompts/test")
  policies = ("sft", "rlaif", "rlhf", "direct_rlaif", "rrhf", "dpo", "oaif")
  assert {name: r["n"] for name, r in ev["harmless"].items()} == dict.fromkeys(policies, 8)
  assert all(r["low"] <= r["rate"] <= r["high"] for r in ev["harmless"].values())
  replies = [json.loads(line) for p in policies for line in open(two / "evaluate" / "harmless" / f"{p}.jsonl")]
  assert len(replies) == 56 and all(r["prompt"].endswith("\n\nAssistant:") for r in replies)
  assert not any("Human:" in r["response"] for r in replies)  # a reply ends where the next turn would start
  report = (two / "report.md").read_text()
  assert "plumbing check" in report and "| rlhf |" in report and "Harmless rate" in report
  assert "| oaif | OAIF (DPO) |" in report and "| dpo | DPO on ai labels |" in report
  assert "Judge: judge_sft" in report and "Warning: the judge" not in report  # a judge of its own
  # everything finished: a rerun skips every stage and rewrites nothing
  stamp = os.path.getmtime(one / "evaluate" / "eval.json")
  (out, err), *_ = _finish(_pipeline(one, 1), timeout=300)
  assert err.count("finished in an earlier run") == len(PIPELINE_STAGES.split(",")) and "Report:" in out
  assert os.path.getmtime(one / "evaluate" / "eval.json") == stamp


def _report(run) -> list[str]:
  """report.md without its folder names, stage wall times and checkpoint digests (a step's files,
  so its checksums, differ with the number of processes that wrote it)."""
  text = re.sub(r"(checkpoints@\d+):[0-9a-f]{12}", r"\1", (run / "report.md").read_text())
  lines = text.replace(str(run), "").splitlines()
  return [line for line in lines if not line.startswith("Stage wall times:")]
