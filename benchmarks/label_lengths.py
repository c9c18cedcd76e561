"""Writes benchmarks/label_lengths.json: token lengths of real labeling prompts, so that
bench_label.py runs at real lengths where neither the data nor the tokenizer is at hand (a
borrowed GPU host has neither).

The prompts are the labeler's own (base harmlessness preamble, both orders, no exemplars) for
the hh-rlhf harmless pairs of the bundled hh-rlhf sample, encoded with Gemma 3's tokenizer (from the
gemma extra's GGUF file) exactly as Labeler.encode does, BOS included, max_len 1024.

python -m benchmarks.label_lengths --data rlaif_jax/data/fixtures/hh-rlhf-sample/harmless-base-test-head200.jsonl.gz
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from rlaif_jax import data
from rlaif_jax.labeling import prompts as P
from rlaif_jax.labeling import tokens
from rlaif_jax.models import loading, pretrained

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "label_lengths.json")


def gemma_vocabulary():
  handle, path = tempfile.mkstemp(suffix=".model")
  with os.fdopen(handle, "wb") as f:
    f.write(loading.gguf_sentencepiece(pretrained.resolve("gemma3-270m")))
  return data.sentencepiece_vocabulary(path)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default="rlaif_jax/data/fixtures/hh-rlhf-sample/harmless-base-test-head200.jsonl.gz")
  parser.add_argument("--max_len", type=int, default=1024)
  parser.add_argument("--preamble", default="base", help="base or detailed")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args()
  pairs, _ = data.read_records(args.data, data.parse_hh_pair, skip_bad=True)
  vocab = gemma_vocabulary()
  config = P.PromptConfig(task="harmlessness", preamble=args.preamble)
  answers = tokens.resolve_answers(vocab, tokens.PAIR_ANSWERS, P.ending(config.task), 262_144)
  reserve = max(len(a) for a in answers.ids)
  lengths, prefix = {}, None
  for order in ("ab", "ba"):
    lengths[order] = []
    for p in pairs:
      first, second = (p["response_a"], p["response_b"]) if order == "ab" else (p["response_b"], p["response_a"])
      ids, _ = P.encode_parts(vocab, P.pair_prompt(config, p["inputs"], first, second), args.max_len - reserve)
      lengths[order].append(len(ids))
      prefix = (
        list(ids) if prefix is None else prefix[: next((i for i, t in enumerate(prefix) if ids[i] != t), len(prefix))]
      )
  everything = lengths["ab"] + lengths["ba"]
  payload = {
    "source": os.path.basename(args.data),
    "tokenizer": "Gemma 3 (gemma3-270m GGUF)",
    "prompt": config.name,
    "max_len": args.max_len,
    "answer_ids": [a[0] for a in answers.ids],
    "pairs": len(pairs),
    "mean": sum(everything) / len(everything),
    "lengths": lengths,
    "shared_prefix": len(prefix),  # tokens every prompt starts with (BOS and the preamble)
  }
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(payload, f)
  print(
    f"{len(pairs)} pairs, mean {payload['mean']:.1f} tokens, max {max(everything)}, {len(prefix)} shared; "
    f"wrote {args.out}"
  )


if __name__ == "__main__":
  main()
