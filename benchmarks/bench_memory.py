"""Memory of compiled train steps, from XLA's own memory analysis: nothing runs, so accelerator
shapes are measured on any machine (the numbers are the compiling backend's: CPU here unless a
GPU is there).

For each preset and mode (full fine-tuning, or LoRA adapters on a frozen base: models.lora), the
update step of SFT (B x T tokens), DPO (B pairs x T) and RL (REINFORCE with a value model, B x
(prompt + new)), and what an iteration holds beside it:
  trained_gb   the trained parameters and their Adam moments (the train state, donated);
  frozen_gb    the frozen base (LoRA), counted once though the policy and value models both read it;
  resident_gb  weights held beside the step: the frozen reference policy of full DPO and RL (with
               LoRA it is the base itself, read with the adapters at zero);
  temp_gb      XLA's temporaries of the step (activations, gradients, the streamed logits);
  total_gb     their sum, the step's peak on one device.

python -m benchmarks.bench_memory --presets gemma3_1b,gemma3_4b --dtype bfloat16
python -m benchmarks.bench_memory --logits --presets gemma3_270m   # full logits vs token_stats
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from rlaif_jax import dpo, losses, models, optimizers, partitioning, rl, trainer
from rlaif_jax.models import lora as lora_lib
from rlaif_jax.sft import SFTObjective

GB = 2**30


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


def _bytes(tree) -> int:
  return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


def _abstract(model, mesh):
  """Abstract parameters of model, with their shardings."""
  abstract, shardings = models.param_shardings(model, mesh)
  return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _batch(step: str, batch: int, seq: int, prompt: int, objective) -> dict:
  if step == "sft":
    tokens = np.ones((batch, seq), np.int32)
    return {"tokens": tokens, "input_mask": tokens > 0, "loss_mask": tokens > 0}
  if step == "dpo":
    tokens = np.ones((batch, 2, seq), np.int32)
    return {"tokens": tokens, "input_mask": tokens > 0, "response_mask": tokens > 0,
            "ref_logp": np.zeros((batch, 2), np.float32), "p_a": np.full(batch, 0.5, np.float32)}  # fmt: skip
  tokens = np.ones((batch, seq), np.int32)
  rollout = {"tokens": tokens, "input_mask": tokens > 0, "response_mask": tokens[:, prompt:] > 0}
  full = nn.meta.unbox(jax.eval_shape(objective.init_params, jax.random.PRNGKey(0)))
  reward = np.zeros(batch, np.float32)
  targets, _ = jax.eval_shape(objective.targets, full, full[rl.POLICY], rollout | {"reward": reward}, np.float32(0.0))
  return rollout | {k: np.zeros(v.shape, v.dtype) for k, v in targets.items()}


def step_memory(step: str, config, lora, batch: int, seq: int, prompt: int) -> dict:
  """One row: the compiled update step's memory for `step` ('sft', 'dpo', 'rl')."""
  mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
  policy = models.Transformer(config, lora=lora)
  if step == "rl":
    objective = rl.Reinforce.build(policy, prompt)
    init, opt = objective.init_params, rl.two_optimizers(optimizers.adamw(1e-5), optimizers.adamw(1e-5))
  else:
    objective = SFTObjective(policy) if step == "sft" else dpo.DpoObjective(policy)
    init, opt = functools.partial(models.init_params, policy, boxed=True), optimizers.adamw(1e-5)
  base = lora_lib.frozen_part(_abstract(policy, mesh))
  frozen = None if lora is None else ({rl.POLICY: base, rl.VALUE: base} if step == "rl" else base)
  t = trainer.Trainer(objective.loss_fn, init, opt, mesh, frozen=frozen, norms_per_model=step == "rl")
  state = t.abstract_state(jax.random.PRNGKey(0))
  local = _batch(step, batch, seq, prompt, objective)
  sharded = partitioning.shard_batch(local, mesh)
  rng = jax.random.PRNGKey(0)
  with partitioning.axis_rules(mesh):
    args = (state, sharded, rng) + ((frozen,) if frozen else ())
    stats = t.compiled_step(sharded).lower(*args).compile().memory_analysis()
  reference = 0 if lora is not None or step == "sft" else _bytes(base)  # a full run's frozen pi_SFT copy
  row = {
    "step": step, "mode": "lora" if lora else "full", "trained_params_m": models.count_params(state.params) / 1e6,
    "trained_gb": _bytes(state) / GB, "frozen_gb": (_bytes(base) if lora else 0) / GB,
    "resident_gb": reference / GB, "temp_gb": stats.temp_size_in_bytes / GB,
  }  # fmt: skip
  row["total_gb"] = row["trained_gb"] + row["frozen_gb"] + row["resident_gb"] + row["temp_gb"]
  return row


def compiled_logits_memory(objective, model, batch: int, seq: int) -> dict:
  mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
  init = functools.partial(models.init_params, model, boxed=True)
  t = trainer.Trainer(objective.loss_fn, init, optimizers.adamw(1e-4), mesh)
  rng = jax.random.PRNGKey(0)
  sharded = partitioning.shard_batch(_batch("sft", batch, seq, 0, None), mesh)
  with partitioning.axis_rules(mesh):
    stats = t.compiled_step(sharded).lower(t.abstract_state(rng), sharded, rng).compile().memory_analysis()
  return {"temp_gb": stats.temp_size_in_bytes / GB, "argument_gb": stats.argument_size_in_bytes / GB}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--presets", default="tiny", help="comma-separated model presets")
  parser.add_argument("--steps", default="sft,dpo,rl")
  parser.add_argument("--modes", default="full,lora")
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=1024, help="SFT and DPO tokens per sequence")
  parser.add_argument("--prompt", type=int, default=512, help="RL prompt tokens (then --new sampled ones)")
  parser.add_argument("--new", type=int, default=256)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--logits", action="store_true", help="compare full logits with token_stats instead")
  common.add_output_flags(parser)
  args = parser.parse_args()
  rows = []
  for name in args.presets.split(","):
    config = models.preset(name, dtype=args.dtype, param_dtype=args.dtype)
    shape = {"preset": name, "dtype": args.dtype, "batch": args.batch}
    if args.logits:
      model = models.Transformer(config)
      full = compiled_logits_memory(FullLogitsObjective(model), model, args.batch, args.seq)
      streamed = compiled_logits_memory(SFTObjective(model), model, args.batch, args.seq)
      rows += [{"loss": "full logits", **shape, **full}, {"loss": "token_stats", **shape, **streamed}]
      rows.append({"loss": "token_stats / full", "temp_gb": streamed["temp_gb"] / full["temp_gb"]})
      continue
    for step in args.steps.split(","):
      seq = args.prompt + args.new if step == "rl" else args.seq
      for mode in args.modes.split(","):
        lora = models.LoraConfig(args.rank, 2.0 * args.rank) if mode == "lora" else None
        row = {**shape, "seq": seq, **step_memory(step, config, lora, args.batch, seq, args.prompt)}
        print(row, flush=True)
        rows.append(row)
  common.report(f"memory_{args.presets.replace(',', '_')}_{args.dtype}", rows, args.out)


if __name__ == "__main__":
  main()
