"""Peak resident memory of each stage on real weights, as a user runs it: Gemma 3 270M (float32, CPU)
through the recipes with the CPU sizes of docs/configuration.md, every training stage with full fine-tuning and
with LoRA (LORA_RANK), each in a process of its own whose peak RSS (getrusage of the child) and wall
time are recorded. The stages feed each other like the recipes do: labels -> RM -> RL with it.

python -m benchmarks.bench_stage_memory --workdir /tmp/stage_memory     # about 30 minutes on 2 cores
python -m benchmarks.bench_stage_memory --stages dpo --modes lora      # one row
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time

from benchmarks import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the first 200 pairs of hh-rlhf's harmless-base test split (the fixture's data root has a few)
HH = os.path.join(ROOT, "rlaif_jax", "data", "fixtures", "hh-rlhf-sample", "harmless-base-test-head200.jsonl.gz")
HH_BUNDLED = os.path.join(ROOT, "rlaif_jax", "data", "fixtures", "hh-rlhf", "harmless-base", "train.jsonl.gz")
MARK = "\n\nAssistant:"

# The recipes' CPU sizes (docs/configuration.md, "A first pass on a CPU"), and the same sizes for the stages
# without a recipe.
SMALL = {
  "sft": ["NUM_STEPS=4", "run_sft.batch_size=4", "run_sft.max_len=384", "run_sft.num_samples=1"],
  "rm": ["RM_STEPS=4", "run_rm.batch_size=4", "run_rm.max_len=384"],
  "dpo": ["DPO_STEPS=4", "run_dpo.batch_size=4", "run_dpo.max_len=384", "run_dpo.kl_prompts=4",
          "run_dpo.kl_max_new_tokens=16", "run_dpo.eval_split=None", "dpo.Fit.eval_every=4"],
  "rl": ["RL_ITERATIONS=2", "run_rl.batch_size=4", "run_rl.max_prompt_len=256", "rl.RolloutSampling.max_new_tokens=16"],
  "rrhf": ["RRHF_STEPS=2", "run_rrhf.batch_size=4", "run_rrhf.max_len=256", "rrhf.Sources.max_new_tokens=16"],
  "evaluate": ["evaluate/sampling.SamplingConfig.max_new_tokens=32"],
}  # fmt: skip
TRAINED = ("sft", "rm", "dpo", "rl", "rl_direct", "oaif", "rrhf")
ORDER = ("label", "sft", "rm", "dpo", "rl", "rl_direct", "oaif", "rrhf", "evaluate")


def write_inputs(workdir: str, pairs: int = 24, prompts: int = 16) -> tuple[str, str]:
  """pairs.jsonl ({prompt, chosen, rejected}) and prompts.jsonl ({prompt}) from the bundled hh-rlhf."""
  rows = []
  with gzip.open(HH if os.path.exists(HH) else HH_BUNDLED, "rt", encoding="utf-8") as f:
    for line in f:
      obj = json.loads(line)
      chosen, rejected = obj["chosen"], obj["rejected"]
      cut = chosen.rfind(MARK) + len(MARK)
      if cut > len(MARK) and chosen[:cut] == rejected[:cut] and len(chosen) < 1500:
        rows.append({"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]})
  os.makedirs(workdir, exist_ok=True)
  pairs_path, prompts_path = os.path.join(workdir, "pairs.jsonl"), os.path.join(workdir, "prompts.jsonl")
  with open(pairs_path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows[:pairs])
  with open(prompts_path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows[pairs : pairs + prompts])
  return pairs_path, prompts_path


def command(stage: str, mode: str, w: str, pairs: str, prompts: str) -> list[str]:
  """The main.py command of one stage (mode 'full' or 'lora'), its folders under w."""
  files, bind = [], [f"WORKDIR='{w}/{stage}_{mode}'"]
  labels, rm = f"{w}/label_full/labels.jsonl", f"{w}/rm_{mode}"
  if stage == "label":
    files, bind = ["gin/recipes/label_my_pairs.gin"], bind + [f"PAIRS='{pairs}'"]
  elif stage == "sft":
    files = ["gin/experiments/gemma3_270m_sft.gin"]
    bind += SMALL["sft"]  # its task: the bundled TL;DR fixtures
  elif stage == "rm":
    files, bind = ["gin/recipes/rm_my_labels.gin"], bind + [f"PAIRS='{pairs}'", f"LABELS='{labels}'"] + SMALL["rm"]
  elif stage == "dpo":
    files = ["gin/models/gemma3_270m.gin", "gin/runs/dpo.gin"]
    bind += ["PRETRAINED='gemma3-270m'", "models.preset.dtype='float32'", f"AI_LABELS='{labels}'"]
    bind += [f"run_dpo.task='{pairs}'", "run_dpo.stop=@generation.StopRule()"] + SMALL["dpo"]
  elif stage in ("rl", "rl_direct"):
    files = [f"gin/recipes/{'rl_direct' if stage == 'rl_direct' else 'rl'}_my_prompts.gin"]
    bind += [f"PROMPTS='{prompts}'"] + ([] if stage == "rl_direct" else [f"RM='{rm}'"]) + SMALL["rl"]
  elif stage == "oaif":
    files = ["gin/recipes/rl_direct_my_prompts.gin", "gin/runs/oaif.gin"]
    bind += [f"PROMPTS='{prompts}'", "oaif/labeling.PromptConfig.task='helpfulness'"] + SMALL["rl"]
  elif stage == "rrhf":
    files, bind = ["gin/recipes/rrhf_my_prompts.gin"], bind + [f"PROMPTS='{prompts}'", f"RM='{rm}'"] + SMALL["rrhf"]
  elif stage == "evaluate":
    files = ["gin/recipes/evaluate_checkpoints.gin"]
    policies = f"{{'start': None, 'rl': '{w}/rl_{mode}/checkpoints'}}"
    bind += [f"PROMPTS='{prompts}'", f"POLICIES={policies}", "run_evaluate.limit=8"] + SMALL["evaluate"]
  if stage in TRAINED:
    bind.append(f"LORA_RANK={16 if mode == 'lora' else 0}")
  argv = [sys.executable, "-m", "rlaif_jax.main"] + [f"--gin_file={f}" for f in files]
  return argv + [f"--gin_bindings={b}" for b in bind]


def measured(argv: list[str], log: str) -> dict:
  """Runs argv in a child of a child, so that getrusage's peak is this run's alone."""
  probe = (
    "import resource, subprocess, sys, time; t = time.time(); "
    f"rc = subprocess.call({argv!r}, stdout=open({log!r}, 'w'), stderr=subprocess.STDOUT); "
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.time() - t)"
  )
  out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
  rc, kb, seconds = out.stdout.split()
  return {"exit": int(rc), "peak_rss_gb": int(kb) / 2**20, "wall_s": float(seconds)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="/tmp/rlaif_jax_stage_memory")
  parser.add_argument("--stages", default=",".join(ORDER))
  parser.add_argument("--modes", default="full,lora")
  common.add_output_flags(parser)
  args = parser.parse_args()
  pairs, prompts = write_inputs(args.workdir)
  rows = []
  for stage in (s for s in ORDER if s in args.stages.split(",")):
    for mode in args.modes.split(",") if stage in TRAINED or stage == "evaluate" else ["full"]:
      argv = command(stage, mode, args.workdir, pairs, prompts)
      t0 = time.time()
      row = {"stage": stage, "mode": mode, **measured(argv, os.path.join(args.workdir, f"{stage}_{mode}.log"))}
      print(row, f"({time.time() - t0:.0f} s)", flush=True)
      rows.append(row)
  common.report("stage_memory_gemma3_270m", rows, args.out)
  sys.exit(1 if any(r["exit"] for r in rows) else 0)


if __name__ == "__main__":
  main()
