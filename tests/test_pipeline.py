"""The README's pipeline, shortened: stages run from one gin experiment, finished stages are
skipped on a rerun, and a run killed in the middle of a stage resumes to the same result."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from pipeline_outputs import SHRUNK_SFT, assert_same, outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = "sft,judge_sft/sft,ai_labels/label,rm_ai/rm,rlaif/rl,evaluate,report"
SMALL = [
  *SHRUNK_SFT,
  "ai_labels/run_label.limit=16",
  "RM_STEPS=60",
  "run_rm.checkpoint_every=10",
  "run_rm.eval_every=60",
  "run_rm.max_len=256",
  "RL_ITERATIONS=2",
  "run_rl.batch_size=8",
  "run_rl.max_prompt_len=192",
  "rl.RLConfig.max_new_tokens=8",
  "run_evaluate.policies={'sft': '{WORKDIR}/sft/checkpoints', 'rlaif': '{WORKDIR}/rl_rlaif/checkpoints'}",
  "run_evaluate.limit=8",
  "run_evaluate.harmless_limit=4",
  "run_evaluate.max_prompt_len=192",
  "run_evaluate.batch_size=8",
  "evaluate/sampling.SamplingConfig.max_new_tokens=8",
]


def _start(cwd):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  args = [sys.executable, "-m", "rlaif_jax.main", "--gin_file=gin/experiments/tiny_pipeline.gin"]
  args += [f"--gin_search_paths={ROOT}", f"--stages={STAGES}"] + [f"--gin_bindings={b}" for b in SMALL]
  return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=400):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out, err


@pytest.mark.slow
def test_pipeline_kill_resume_and_skip(tmp_path):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  straight.mkdir()
  killed.mkdir()
  reference = _start(straight)
  interrupted = _start(killed)
  ckpt = killed / "runs" / "pipeline" / "rm_ai" / "checkpoints"
  deadline = time.time() + 400
  while not (ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())):
    assert interrupted.poll() is None, interrupted.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  interrupted.send_signal(signal.SIGKILL)  # no chance to save: the reward model is mid-training
  interrupted.wait()
  log = json.load(open(killed / "runs" / "pipeline" / "stages.json"))
  assert list(log) == ["sft", "judge_sft/sft", "ai_labels/label"]  # killed inside rm_ai/rm
  out, err = _finish(_start(killed))
  assert "stage sft: finished in an earlier run" in err and "stage judge_sft/sft: finished" in err
  metrics = [json.loads(x) for x in open(killed / "runs" / "pipeline" / "rm_ai" / "metrics.jsonl")]
  assert metrics[-1]["step"] == 60
  _finish(reference)
  assert_same(outputs(straight / "runs" / "pipeline"), outputs(killed / "runs" / "pipeline"))
  report = (killed / "runs" / "pipeline" / "report.md").read_text()
  assert "plumbing check" in report and "| rlaif |" in report and "Harmless rate" in report
  assert "Judge: judge_sft" in report and "Warning: the judge" not in report  # a judge of its own
  assert "Report: runs/pipeline/report.md" in out
  # everything finished: a rerun skips every stage and rewrites nothing
  stamp = os.path.getmtime(killed / "runs" / "pipeline" / "evaluate" / "eval.json")
  out, err = _finish(_start(killed), timeout=120)
  assert err.count("finished in an earlier run") == len(STAGES.split(","))
  assert os.path.getmtime(killed / "runs" / "pipeline" / "evaluate" / "eval.json") == stamp
