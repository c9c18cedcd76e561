"""Writes benchmarks/sft_lengths.json: token lengths of real SFT examples (the dialogue up to
the last Assistant cue, then the chosen reply and EOS), so that `bench_train --lengths_file`
times padded against packed batches at real lengths where neither the data nor the tokenizer is
at hand.

The examples are the hh-rlhf harmless lines of the bundled hh-rlhf sample, read as the hh_harmless_sft
task reads them (data.parse_hh_sft) and encoded with Gemma 3's tokenizer (from the gemma
extra's GGUF file), EOS after the reply, as the SFT tasks tokenize them.

python -m benchmarks.sft_lengths --data rlaif_jax/data/fixtures/hh-rlhf-sample/harmless-base-test-head200.jsonl.gz
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks.label_lengths import gemma_vocabulary
from rlaif_jax import data

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_lengths.json")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default="rlaif_jax/data/fixtures/hh-rlhf-sample/harmless-base-test-head200.jsonl.gz")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args()
  examples, _ = data.read_records(args.data, data.parse_hh_sft, skip_bad=True)
  vocab = gemma_vocabulary()
  inputs = [len(vocab.encode(ex["inputs"])) for ex in examples]
  targets = [len(vocab.encode(ex["targets"])) + 1 for ex in examples]  # EOS
  payload = {
    "source": os.path.basename(args.data),
    "tokenizer": "Gemma 3 (gemma3-270m GGUF)",
    "examples": len(examples),
    "mean": sum(inputs + targets) / len(examples),
    "inputs": inputs,
    "targets": targets,
  }
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(payload, f)
  total = [a + b for a, b in zip(inputs, targets)]
  print(f"{len(examples)} examples, mean {payload['mean']:.1f} tokens, max {max(total)}; wrote {args.out}")


if __name__ == "__main__":
  main()
