"""A held-out check of the evaluate recipe on real weights: its greedy generations of Gemma 3
270M on hh-rlhf prompts that no parity test uses, against transformers' `generate` on the same GGUF
(BOS first, as its tokenizer adds it), prompt by prompt. Prints a table and writes JSON.

python -m benchmarks.parity_evaluate --n 8   (--data: the bundled hh-rlhf sample by default)

The recipe runs as a user runs it (`python -m rlaif_jax.main --gin_file=gin/recipes/evaluate_checkpoints.gin`,
two names for the pretrained policy, greedy, max_new_tokens new tokens, EOS the only stop), in
its own process; transformers then answers the prompts the recipe read, one at a time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile

from benchmarks import common


def unseen_prompts(path: str, n: int, skip_last: int) -> list[str]:
  """Dialogues of the sample's pairs before its last skip_last (the parity tests' held-out pairs)."""
  from rlaif_jax import data

  with gzip.open(path, "rt", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  out = []
  for row in reversed(rows[: len(rows) - skip_last]):
    try:
      dialogue = data.split_dialogue(row["chosen"], row["rejected"])[0]
    except data.FieldError:
      continue
    if len(dialogue) < 1200:  # well inside the recipe's max_prompt_len (384 tokens)
      out.append(dialogue)
  return out[:n]


def run_recipe(prompts: list[str], workdir: str, max_new: int) -> list[str]:
  """The evaluate recipe's generations of the pretrained policy, in prompt order."""
  path = os.path.join(workdir, "prompts.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    for p in prompts:
      f.write(json.dumps({"prompt": p}) + "\n")
  bindings = [
    f"PROMPTS='{path}'",
    f"WORKDIR='{workdir}/eval'",
    "POLICIES={'start': None, 'again': None}",
    f"evaluate/sampling.SamplingConfig.max_new_tokens={max_new}",
  ]
  argv = [sys.executable, "-m", "rlaif_jax.main", "--gin_file=gin/recipes/evaluate_checkpoints.gin"]
  subprocess.run(argv + [f"--gin_bindings={b}" for b in bindings], check=True)
  with open(os.path.join(workdir, "eval", "generations", "start.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  by_prompt = {r["prompt"]: r["response"] for r in records if "response" in r}
  return [by_prompt[p] for p in prompts]


def transformers_replies(prompts: list[str], max_new: int) -> list[str]:
  import torch
  import transformers

  from rlaif_jax.models import pretrained

  directory, name = os.path.split(pretrained.resolve("gemma3-270m"))
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
  out = []
  for p in prompts:
    ids = tokenizer(p, return_tensors="pt").input_ids  # BOS first
    with torch.no_grad():
      new = model.generate(ids, max_new_tokens=max_new, do_sample=False, eos_token_id=1, pad_token_id=0)
    out.append(tokenizer.decode(new[0, ids.shape[1] :], skip_special_tokens=True).strip())
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default="rlaif_jax/data/fixtures/hh-rlhf-sample/harmless-base-test-head200.jsonl.gz")
  parser.add_argument("--n", type=int, default=8)
  parser.add_argument("--skip_last", type=int, default=40, help="pairs at the end left out (the tests use them)")
  parser.add_argument("--max_new", type=int, default=32)
  common.add_output_flags(parser)
  args = parser.parse_args(argv)
  prompts = unseen_prompts(args.data, args.n, args.skip_last)
  with tempfile.TemporaryDirectory(prefix="parity_evaluate-") as workdir:
    ours = run_recipe(prompts, workdir, args.max_new)
  theirs = transformers_replies(prompts, args.max_new)
  rows = [
    {"prompt": i, "prompt_chars": len(p), "equal": a == b, "ours": a[:60], "transformers": b[:60]}
    for i, (p, a, b) in enumerate(zip(prompts, ours, theirs))
  ]
  rows.append({"prompt": "all", "equal": sum(r["equal"] for r in rows), "ours": f"of {len(prompts)}"})
  common.report("parity_evaluate", rows, args.out)
  return 0 if all(a == b for a, b in zip(ours, theirs)) else 1


if __name__ == "__main__":
  sys.exit(main())
