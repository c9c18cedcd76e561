"""The pipeline tests' shared pieces: how they shrink SFT, and what a pipeline run produced, for
comparing two runs of it (straight and resumed, one process and two): texts must be identical,
numbers equal up to float noise."""

import json
import os

import numpy as np

# SFT shrunk to a few steps and short samples, as every pipeline test runs it
SHRUNK_SFT = [
  "NUM_STEPS=4",
  "run_sft.batch_size=8",
  "run_sft.max_len=256",
  "sft.Fit.eval_every=4",
  "run_sft.num_samples=1",
  "sft_samples/sampling.SamplingConfig.max_new_tokens=8",
]

# numbers that measure the machine, not the method
_TIMINGS = ("per_sec", "tokens_per", "seconds", "time")


def _jsonl(path) -> list[dict]:
  return [json.loads(line) for line in open(path)]


def _curve(path) -> list[dict]:
  return [{k: v for k, v in r.items() if not any(t in k for t in _TIMINGS)} for r in _jsonl(path)]


def outputs(run) -> dict:
  """Labels, reward-model accuracy and statistics, RL, OAIF (with its labels), DPO and RRHF curves
  and DPO's final evaluation, evaluation generations
  (without made_with: its digest holds absolute paths) and win and harmless rates; each only
  where the run has it."""
  run = str(run)
  found = {}
  path = lambda *p: os.path.join(run, *p)  # noqa: E731
  if os.path.exists(path("candidates", "candidates.jsonl")):
    found["candidates"] = [
      {k: v for k, v in r.items() if k != "made_with"} for r in _jsonl(path("candidates", "candidates.jsonl"))
    ]
  found["labels"] = [(r["id"], r["p_a"]) for r in _jsonl(path("ai_labels", "labels.jsonl"))]
  rm = json.load(open(path("rm_ai", "report.json")))
  found["rm"] = (rm["eval_accuracy_human"], rm["reward_stats"])
  for name in ("rl_rlaif", "rl_rlhf", "rl_direct", "rl_oaif", "rrhf", "dpo"):
    if os.path.exists(path(name, "metrics.jsonl")):
      found[name] = _curve(path(name, "metrics.jsonl"))
  if os.path.exists(path("rl_oaif", "rollouts.jsonl")):  # every pair OAIF sampled and its labels
    found["oaif_labels"] = _jsonl(path("rl_oaif", "rollouts.jsonl"))
  if os.path.exists(path("dpo", "summary.json")):
    dpo = json.load(open(path("dpo", "summary.json")))
    found["dpo"] = [found.get("dpo"), {k: v for k, v in dpo.items() if k.startswith("eval_")}]
  generations = path("evaluate", "generations")
  for name in sorted(f for f in os.listdir(generations) if f.endswith(".jsonl")):
    found[f"generations/{name}"] = [
      {k: v for k, v in r.items() if k != "made_with"} for r in _jsonl(os.path.join(generations, name))
    ]
  ev = json.load(open(path("evaluate", "eval.json")))
  found["pairwise"] = ev["pairwise"]
  found["harmless"] = ev["harmless"]
  return found


def assert_same(a: dict, b: dict, atol: float = 1e-5) -> None:
  assert sorted(a) == sorted(b)
  for k in a:  # texts identical; numbers equal up to float noise
    x, y = _flat(a[k]), _flat(b[k])
    assert len(x) == len(y), k
    for u, v in zip(x, y):
      if isinstance(u, float) and isinstance(v, float):
        assert np.isclose(u, v, rtol=1e-4, atol=atol, equal_nan=True), (k, u, v)
      else:
        assert u == v, (k, u, v)


def _flat(x) -> list:
  if isinstance(x, dict):
    return [k for k in sorted(x)] + [v for k in sorted(x) for v in _flat(x[k])]
  if isinstance(x, (list, tuple)):
    return [v for item in x for v in _flat(item)]
  if isinstance(x, bool) or x is None:
    return [x]
  return [float(x)] if isinstance(x, (int, float)) else [x]
