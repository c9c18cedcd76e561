"""Train-step throughput: tokens/s, FLOPs (analytic and XLA-counted) and MFU; with --peer (in
its own process) the same step in PyTorch on transformers' Gemma 3: forward, float32 next-token
cross-entropy, backward, gradient clipping at 1 and AdamW (fused on CUDA), float32 weights with
bfloat16 autocast where our compute dtype is bfloat16 (ours keeps float32 parameters too).

python -m benchmarks.bench_train --preset tiny --batch 16 --seq 512 --peer
python -m benchmarks.bench_train --preset gemma3_270m --batch 8 --seq 1024 --dtype bfloat16 --peer   # on a GPU

With --lengths_file benchmarks/sft_lengths.json, the step on rows at real SFT lengths, one
example to a row against several (data.pack_sft_features): examples and target tokens per second.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import jax
import numpy as np

from benchmarks import common
from rlaif_jax import data, models, optimizers, partitioning, trainer
from rlaif_jax.sft import SFTObjective


def run(preset: str, batch: int, seq: int, dtype: str, iters: int, accum: int, warmup: int) -> dict:
  config = models.preset(preset, dtype=dtype)
  model = models.Transformer(config)
  mesh = partitioning.make_mesh({"data": -1})
  t = trainer.Trainer(
    SFTObjective(model).loss_fn,
    functools.partial(models.init_params, model, boxed=True),
    optimizers.adamw(1e-4),
    mesh,
    accum_steps=accum,
  )
  rng = jax.random.PRNGKey(0)
  state = t.init_state(rng)
  local = {
    "tokens": batch_tokens(config, batch, seq),
    "input_mask": np.ones((batch, seq), bool),
    "loss_mask": np.ones((batch, seq), bool),
  }
  sharded = partitioning.shard_batch(local, mesh)
  start = time.perf_counter()
  with partitioning.axis_rules(mesh):
    step = t.compiled_step(sharded)
    compiled = step.lower(state, sharded, rng).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0

  holder = {"state": state}

  def one():
    with partitioning.axis_rules(mesh):
      holder["state"], metrics = step(holder["state"], sharded, rng)
    jax.block_until_ready(metrics["loss"])

  seconds = common.time_fn(one, warmup=warmup, iters=iters)
  tokens = batch * (seq - 1)
  flops_per_token = common.train_flops_per_token(config, seq)
  peak = common.device_peak_flops()
  achieved = flops_per_token * tokens / seconds
  return {
    "impl": common.OURS,
    "preset": preset,
    "dtype": dtype,
    "batch": batch,
    "seq": seq,
    "params": models.count_params(state.params),
    "compile_s": compile_s,
    "step_s": seconds,
    "tokens_per_s": tokens / seconds,
    "tflops_per_step_analytic": flops_per_token * tokens / 1e12,
    "tflops_per_step_xla": xla_flops / 1e12,
    "achieved_tflop_s": achieved / 1e12,
    "mfu": achieved / (peak * jax.device_count()) if peak else None,
    "peak_mem_gb": common.peak_memory_gb(),
  }


def length_batches(config, lengths_file: str, seq: int) -> dict[str, dict]:
  """Rows of random tokens at the lengths of real SFT examples (sft_lengths.json), cut to seq as
  data.sft_features cuts them: one per row ("padded") and packed several to a row ("packed")."""
  with open(lengths_file, encoding="utf-8") as f:
    lengths = json.load(f)
  rng = np.random.default_rng(0)
  high = min(config.vocab_size, 259)
  examples = [
    {"inputs": rng.integers(3, high, a), "targets": rng.integers(3, high, b)}
    for a, b in zip(lengths["inputs"], lengths["targets"])
  ]
  padded, _ = data.sft_features(examples, seq)
  packed, _ = data.pack_sft_features(padded)
  return {"padded": padded, "packed": packed}


def run_lengths(preset: str, batch: int, seq: int, dtype: str, iters: int, warmup: int, lengths_file: str) -> list:
  """The train step on real lengths, padded and packed: examples and target tokens per second
  over a whole epoch's rows (the step's time is measured on its first batch of each kind)."""
  config = models.preset(preset, dtype=dtype)
  model = models.Transformer(config)
  mesh = partitioning.make_mesh({"data": -1})
  rows = []
  for kind, arrays in length_batches(config, lengths_file, seq).items():
    seconds = _step_seconds(model, mesh, {k: v[:batch] for k, v in arrays.items()}, iters, warmup)
    n_rows = len(arrays["tokens"])
    examples = len(arrays["tokens"]) if kind == "padded" else int(arrays["segment_ids"].max(axis=1).sum())
    targets = int(arrays["loss_mask"][:, 1:].sum())
    epoch_s = seconds * n_rows / batch
    rows.append({
      "impl": f"{common.OURS} {kind}", "preset": preset, "dtype": dtype, "batch": batch, "seq": seq,
      "rows": n_rows, "fill": float(arrays["input_mask"].mean()), "step_s": seconds,
      "examples_per_s": examples / epoch_s, "target_tokens_per_s": targets / epoch_s,
      "real_tokens_per_s": float(arrays["input_mask"].sum()) / epoch_s,
    })  # fmt: skip
  ratio = common.ratio_row(rows[1], rows[0], ["examples_per_s", "target_tokens_per_s", "step_s"])
  return rows + [ratio | {"impl": "packed/padded"}]


def _step_seconds(model, mesh, local: dict, iters: int, warmup: int) -> float:
  """Seconds per train step (AdamW) on one batch, with a trainer of its own (one per batch layout)."""
  init = functools.partial(models.init_params, model, boxed=True)
  t = trainer.Trainer(SFTObjective(model).loss_fn, init, optimizers.adamw(1e-4), mesh)
  rng = jax.random.PRNGKey(0)
  holder = {"state": t.init_state(rng)}
  sharded = partitioning.shard_batch(local, mesh)
  with partitioning.axis_rules(mesh):
    step = t.compiled_step(sharded)

  def one():
    with partitioning.axis_rules(mesh):
      holder["state"], metrics = step(holder["state"], sharded, rng)
    jax.block_until_ready(metrics["loss"])

  return common.time_fn(one, warmup=warmup, iters=iters)


def batch_tokens(config: models.TransformerConfig, batch: int, seq: int) -> np.ndarray:
  return np.random.default_rng(0).integers(3, min(config.vocab_size, 259), size=(batch, seq)).astype(np.int32)


def run_peer(preset: str, batch: int, seq: int, dtype: str, iters: int, warmup: int) -> dict:
  """The same step in PyTorch: full-sequence logits, float32 cross-entropy, clipping, AdamW."""
  import torch
  import torch.nn.functional as F

  from benchmarks import peer

  config = models.preset(preset, dtype=dtype)
  model = peer.build_model(config, torch.float32).train()  # float32 master weights, as ours
  dev = peer.device()
  opt = torch.optim.AdamW(
    model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=dev.type == "cuda"
  )
  tokens = torch.from_numpy(batch_tokens(config, batch, seq).astype(np.int64)).to(dev)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  attention = torch.ones_like(inputs)
  low = peer.DTYPES[dtype]

  def step():
    with torch.autocast(dev.type, dtype=low, enabled=low != torch.float32):
      logits = model(input_ids=inputs, attention_mask=attention).logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    peer.sync()

  peer.reset_peak_memory()
  start = time.perf_counter()
  step()
  first_s = time.perf_counter() - start
  seconds = common.time_fn(step, warmup=max(warmup - 1, 0), iters=iters)
  tokens_per_step = batch * (seq - 1)
  flops = common.train_flops_per_token(config, seq) * tokens_per_step
  return {
    "impl": common.PEER,
    "preset": preset,
    "dtype": dtype,
    "batch": batch,
    "seq": seq,
    "params": sum(p.numel() for p in model.parameters()),
    "compile_s": first_s,  # the first step: allocation and kernel selection, no compilation
    "step_s": seconds,
    "tokens_per_s": tokens_per_step / seconds,
    "tflops_per_step_analytic": flops / 1e12,
    "achieved_tflop_s": flops / seconds / 1e12,
    "mfu": common.mfu(flops, seconds, common.device_peak_flops(peer.device_name())),
    "peak_mem_gb": peer.peak_memory_gb(),
  } | peer.versions()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="tiny", choices=sorted(models.PRESETS))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--accum", type=int, default=1)
  parser.add_argument("--lengths_file", help="sft_lengths.json: time padded against packed rows at these lengths")
  common.add_output_flags(parser, peer_help="also time the step in PyTorch on transformers' Gemma 3")
  args = parser.parse_args()
  if args.lengths_file:
    shape = (args.preset, args.batch, args.seq, args.dtype, args.iters, args.warmup, args.lengths_file)
    rows = run_lengths(*shape)
    common.report(f"train_packing_{args.preset}_{args.dtype}_{args.batch}x{args.seq}", rows, args.out)
    sys.exit(common.exit_status(rows))
  if args.peer_child:
    shape = (args.preset, args.batch, args.seq, args.dtype, args.iters, args.warmup)
    common.peer_child(args.peer_child, run_peer, *shape)
    return
  argv = common.child_argv(sys.argv[1:])
  peer_rows = common.peer_rows("benchmarks.bench_train", argv, args.peer_timeout) if args.peer else []
  try:
    rows = [run(args.preset, args.batch, args.seq, args.dtype, args.iters, args.accum, args.warmup)]
  except Exception as e:  # out of memory, say: reported beside the peer's row
    rows = [common.failed(common.OURS, e)]
  for theirs in peer_rows:
    rows.append(theirs)
    if "error" not in theirs and "error" not in rows[0]:
      rows.append(common.ratio_row(rows[0], theirs, ["tokens_per_s", "mfu", "peak_mem_gb"]))
  common.report(f"train_{args.preset}_{args.dtype}_{args.batch}x{args.seq}", rows, args.out)
  sys.exit(common.exit_status(rows))


if __name__ == "__main__":
  main()
