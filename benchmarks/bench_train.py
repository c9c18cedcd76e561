"""Train-step throughput: tokens/s, FLOPs (analytic and XLA-counted) and MFU.

python benchmarks/bench_train.py --preset tiny --batch 16 --seq 512
python benchmarks/bench_train.py --preset gemma3_270m --batch 8 --seq 1024 --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np

from benchmarks import common
from rlaif_jax import models, optimizers, partitioning, trainer
from rlaif_jax.sft import SFTObjective


def run(preset: str, batch: int, seq: int, dtype: str, iters: int, accum: int) -> dict:
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
  data = np.random.default_rng(0)
  local = {
    "tokens": data.integers(3, min(config.vocab_size, 259), size=(batch, seq)).astype(np.int32),
    "input_mask": np.ones((batch, seq), bool),
    "loss_mask": np.ones((batch, seq), bool),
  }
  sharded = partitioning.shard_batch(local, mesh)
  with partitioning.axis_rules(mesh):
    step = t.compiled_step(sharded)
    compiled = step.lower(state, sharded, rng).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0

  holder = {"state": state}

  def one():
    with partitioning.axis_rules(mesh):
      holder["state"], metrics = step(holder["state"], sharded, rng)
    jax.block_until_ready(metrics["loss"])

  seconds = common.time_fn(one, warmup=2, iters=iters)
  tokens = batch * (seq - 1)
  flops_per_token = common.train_flops_per_token(config, seq)
  peak = common.device_peak_flops()
  achieved = flops_per_token * tokens / seconds
  return {
    "preset": preset,
    "dtype": dtype,
    "batch": batch,
    "seq": seq,
    "params": models.count_params(state.params),
    "step_s": seconds,
    "tokens_per_s": tokens / seconds,
    "tflops_per_step_analytic": flops_per_token * tokens / 1e12,
    "tflops_per_step_xla": xla_flops / 1e12,
    "achieved_tflop_s": achieved / 1e12,
    "mfu": achieved / (peak * jax.device_count()) if peak else None,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="tiny", choices=sorted(models.PRESETS))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--accum", type=int, default=1)
  parser.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results)")
  args = parser.parse_args()
  row = run(args.preset, args.batch, args.seq, args.dtype, args.iters, args.accum)
  common.report(f"train_{args.preset}_{args.dtype}", row, args.out)


if __name__ == "__main__":
  main()
