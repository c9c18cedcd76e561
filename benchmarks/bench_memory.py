"""Memory of a compiled SFT train step: the logits over the whole vocabulary against the
streamed log-probabilities the objectives use (Transformer.token_stats), from XLA's own memory
analysis of the compiled step. Compiling is enough, nothing runs, so it measures accelerator
shapes on any machine (the numbers are the compiling backend's: CPU here unless a GPU is there).

python -m benchmarks.bench_memory --preset gemma3_270m --batch 8 --seq 1024 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from rlaif_jax import losses, models, optimizers, partitioning, trainer
from rlaif_jax.sft import SFTObjective


@dataclasses.dataclass(frozen=True)
class FullLogitsObjective:
  """The SFT loss through the [B, T, V] logits, as it was computed before token_stats."""

  model: models.Transformer

  def loss_fn(self, params, batch, rng):
    inputs, targets, target_mask = losses.next_token_inputs(batch["tokens"], batch["loss_mask"])
    logits = self.model.apply({"params": params}, inputs, batch["input_mask"][:, :-1])
    loss, count = losses.masked_token_cross_entropy(logits, targets, target_mask)
    accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * target_mask) / jnp.maximum(count, 1.0)
    return loss, {"accuracy": accuracy, "target_tokens": count, "weight": count}


def compiled_memory(objective, model, batch: int, seq: int) -> dict:
  mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
  t = trainer.Trainer(
    objective.loss_fn, functools.partial(models.init_params, model, boxed=True), optimizers.adamw(1e-4), mesh
  )
  rng = jax.random.PRNGKey(0)
  state = t.abstract_state(rng)
  tokens = np.ones((batch, seq), np.int32)
  local = {"tokens": tokens, "input_mask": tokens > 0, "loss_mask": tokens > 0}
  sharded = partitioning.shard_batch(local, mesh)
  with partitioning.axis_rules(mesh):
    compiled = t.compiled_step(sharded).lower(state, sharded, rng).compile()
  stats = compiled.memory_analysis()
  return {
    "temp_gb": stats.temp_size_in_bytes / 2**30,
    "argument_gb": stats.argument_size_in_bytes / 2**30,
    "output_gb": stats.output_size_in_bytes / 2**30,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="tiny", choices=sorted(models.PRESETS))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=1024)
  parser.add_argument("--dtype", default="bfloat16")
  common.add_output_flags(parser)
  args = parser.parse_args()
  model = models.Transformer(models.preset(args.preset, dtype=args.dtype))
  shape = {"preset": args.preset, "dtype": args.dtype, "batch": args.batch, "seq": args.seq}
  full = {"loss": "full logits", **shape, **compiled_memory(FullLogitsObjective(model), model, args.batch, args.seq)}
  streamed = {"loss": "token_stats", **shape, **compiled_memory(SFTObjective(model), model, args.batch, args.seq)}
  ratio = {"loss": "token_stats / full", "temp_gb": streamed["temp_gb"] / full["temp_gb"]}
  common.report(f"memory_{args.preset}_{args.dtype}", [full, streamed, ratio], args.out)


if __name__ == "__main__":
  main()
