"""Labeling throughput: the labeler's hot loop, prefill scoring of prompts with the answer
tokens' logits at the last position, at the lengths of real labeling prompts.

Ours is Labeler.answer_scores called as label_pairs calls it: once per order, the prompts
sorted by length into batches of batch_size rows, each batch's length rounded up to the
labeler's bucket. The peer (--peer, in its own process) is a transformers forward over the same
prompts in batches in their given order (as a caller would write it), each left-padded to its
longest prompt, logits at the last position only. Both sides load the same random
weights, so their answer logits are compared (the last row's max_abs_*_diff).

Prompt lengths come from label_lengths.json (the labeler's prompts for real hh-rlhf harmless
pairs under Gemma 3's tokenizer; --pairs of them, both orders; every prompt starts with the
same shared_prefix tokens, as the real ones start with BOS and the preamble) or from --lengths.
Ours computes a shared prefix of share_prefix tokens or more once per call (Labeler.share_prefix);
slots_per_token is the token positions each side computes per real token. Rates count
real tokens only; MFU is prefill FLOPs (2 N without the output projection, plus attention) on
real tokens over the device's peak.

python -m benchmarks.bench_label --preset tiny --peer
python -m benchmarks.bench_label --preset gemma3_1b --dtype bfloat16 --batch 32 --peer   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from benchmarks import common
from rlaif_jax import models, sampling
from rlaif_jax.labeling import tokens
from rlaif_jax.labeling.labeler import Labeler

LENGTHS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "label_lengths.json")


def prompt_sets(args, vocab_size: int) -> tuple[dict[str, list[list[int]]], tuple[int, ...]]:
  """({order: random token ids at the chosen lengths}, the two answer ids)."""
  with open(args.lengths_file, encoding="utf-8") as f:
    fixture = json.load(f)
  if args.lengths:
    lengths, shared = {"ab": [int(n) for n in args.lengths.split(",")]}, 0
  else:
    lengths = {order: ls[: args.pairs] for order, ls in fixture["lengths"].items()}
    shared = fixture.get("shared_prefix", 0)  # BOS and the preamble: the same tokens in every prompt
  rng = np.random.default_rng(args.seed)
  high = min(vocab_size, 256_000)
  prefix = [2, *rng.integers(3, high, size=max(shared - 1, 0)).tolist()]
  sets = {
    o: [prefix + rng.integers(3, high, size=max(n - len(prefix), 1)).tolist() for n in ls] for o, ls in lengths.items()
  }
  return sets, tuple(i % vocab_size for i in fixture["answer_ids"])


def chunks(rows: list, size: int):
  return [rows[i : i + size] for i in range(0, len(rows), size)]


def shape_row(args, config, sets: dict, slots: int) -> dict:
  """What both sides share: the workload, its real tokens and prefill FLOPs; slots: the token
  positions a side computes (padding included, a shared prefix once)."""
  flat = [p for ps in sets.values() for p in ps]
  real = sum(len(p) for p in flat)
  flops = sum(common.forward_flops_per_token(config, len(p), logits=False) * len(p) for p in flat)
  return {
    "preset": args.preset,
    "dtype": args.dtype,
    "batch": args.batch,
    "prompts": len(flat),
    "mean_len": real / len(flat),
    "slots_per_token": slots / real,
    "_tokens": real,
    "_flops": flops,
  }


def rates(row: dict, first_s: float, seconds: float, peak_flops: float | None, memory_gb: float | None) -> dict:
  tokens_, flops = row.pop("_tokens"), row.pop("_flops")
  return row | {
    "first_call_s": first_s,
    "pass_s": seconds,
    "prompts_per_s": row["prompts"] / seconds,
    "pairs_per_s": row["prompts"] / 2 / seconds,  # a pair is scored in both orders
    "tokens_per_s": tokens_ / seconds,
    "tflop_s": flops / seconds / 1e12,
    "mfu": common.mfu(flops, seconds, peak_flops),
    "peak_mem_gb": memory_gb,
  }


def run_ours(args) -> tuple[dict, np.ndarray]:
  config = models.preset(args.preset, dtype=args.dtype)
  sets, answer_ids = prompt_sets(args, config.vocab_size)
  params = common.params_from_checkpoint(config, common.random_checkpoint(config, args.seed))
  labeler = Labeler(
    models.Transformer(config),
    params,
    None,
    max_len=args.max_len,
    batch_size=args.batch,
    share_prefix=args.share_prefix,
  )
  del params
  answers = tokens.Answers(("1", "2"), tuple((i,) for i in answer_ids))
  one = lambda: np.concatenate([labeler.answer_scores(ps, answers) for ps in sets.values()])  # noqa: E731
  start = time.perf_counter()
  scores = one()  # compiles one function per bucket length
  first_s = time.perf_counter() - start
  seconds = common.time_fn(one, warmup=0, iters=args.iters)
  slots, shared = 0, 0
  for ps in sets.values():
    shared = labeler._shared_prefix(ps)  # computed once per call, then each batch's own tokens
    slots += args.batch * shared
    for chunk in chunks(sorted(ps, key=len), args.batch):  # answer_scores batches prompts by length
      slots += args.batch * labeler._bucket(max(len(p) for p in chunk) - shared)
  row = {"impl": common.OURS} | shape_row(args, config, sets, slots) | {"shared_prefix": shared}
  return rates(row, first_s, seconds, common.device_peak_flops(), common.peak_memory_gb()), scores


def run_peer(args) -> dict:
  import torch

  from benchmarks import peer

  config = models.preset(args.preset, dtype=args.dtype)
  sets, answer_ids = prompt_sets(args, config.vocab_size)
  model = peer.build_model(config, peer.DTYPES[args.dtype], common.random_checkpoint(config, args.seed)).eval()
  answer = torch.tensor(answer_ids, device=peer.device())

  @torch.inference_mode()
  def one():
    out = []
    for ps in sets.values():
      for chunk in chunks(ps, args.batch):
        ids, attention, positions = peer.left_padded(*sampling.left_pad(chunk))
        logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=1).logits
        out.append(logits[:, -1, answer].float().cpu().numpy())
    return np.concatenate(out)

  peer.reset_peak_memory()
  start = time.perf_counter()
  scores = one()
  first_s = time.perf_counter() - start
  seconds = common.time_fn(one, warmup=0, iters=args.iters)
  padded = sum(len(chunk) * max(len(p) for p in chunk) for ps in sets.values() for chunk in chunks(ps, args.batch))
  row = {"impl": common.PEER} | shape_row(args, config, sets, padded)
  row = rates(row, first_s, seconds, common.device_peak_flops(peer.device_name()), peer.peak_memory_gb())
  return row | peer.versions() | {"_scores": scores.tolist()}


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict:
  """Largest differences of the answer logits and of P("1") = softmax over the two answers."""
  p1 = lambda s: 1 / (1 + np.exp(s[:, 1] - s[:, 0]))  # noqa: E731
  return {
    "max_abs_logit_diff": float(np.max(np.abs(ours - theirs))),
    "max_abs_p1_diff": float(np.max(np.abs(p1(ours) - p1(theirs)))),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="tiny", choices=sorted(models.PRESETS))
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--pairs", type=int, default=48, help="pairs of label_lengths.json, both orders scored")
  parser.add_argument("--lengths", default="", help="comma-separated prompt lengths instead of label_lengths.json")
  parser.add_argument("--lengths_file", default=LENGTHS, help="label_lengths.py's JSON (lengths, shared prefix)")
  parser.add_argument("--share_prefix", type=int, default=32, help="Labeler.share_prefix (0: every prompt whole)")
  parser.add_argument("--max_len", type=int, default=1024)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  common.add_output_flags(parser, peer_help="also run transformers on the same prompts and weights")
  args = parser.parse_args()
  if args.peer_child:
    common.peer_child(args.peer_child, run_peer, args)
    return
  argv = common.child_argv(sys.argv[1:])
  peer_rows = common.peer_rows("benchmarks.bench_label", argv, args.peer_timeout) if args.peer else []
  try:
    ours, scores = run_ours(args)
  except Exception as e:  # out of memory, say: reported beside the peer's row
    ours, scores = common.failed(common.OURS, e), None
  rows = [ours]
  for theirs in peer_rows:
    their_scores = theirs.pop("_scores", None)
    rows.append(theirs)
    if "error" not in theirs and "error" not in ours:
      keys = ["prompts_per_s", "tokens_per_s", "mfu", "peak_mem_gb"]
      rows.append(common.ratio_row(ours, theirs, keys) | agreement(scores, np.asarray(their_scores)))
  common.report(f"label_{args.preset}_{args.dtype}", rows, args.out)
  sys.exit(common.exit_status(rows))


if __name__ == "__main__":
  main()
