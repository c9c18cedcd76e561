"""One RL iteration's phases: KV-cache sampling of the rollouts, the rollout pass (policy,
reference and value forward + targets), and the policy + value update step.

python -m benchmarks.bench_rl --preset tiny --batch 16 --prompt 384 --new 64
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np

from benchmarks import common
from rlaif_jax import models, optimizers, partitioning, rl, sampling, trainer


def run(preset: str, batch: int, prompt: int, new: int, dtype: str, iters: int) -> dict:
  config = models.preset(preset, dtype=dtype)
  policy, value = models.Transformer(config), models.Transformer(config, scalar_head=True)
  objective = rl.Reinforce(policy, value, prompt)
  mesh = partitioning.make_mesh({"data": -1})

  def init(rng):
    a, b = jax.random.split(rng)
    return {rl.POLICY: models.init_params(policy, a, boxed=True), rl.VALUE: models.init_params(value, b, boxed=True)}

  opt = rl.two_optimizers(optimizers.adamw(1e-5), optimizers.adamw(1e-5))
  rl_trainer = trainer.Trainer(objective.loss_fn, init, opt, mesh, norms_per_model=True)
  state = rl_trainer.init_state(jax.random.PRNGKey(0))
  ref = jax.tree_util.tree_map(lambda x: x.copy(), state.params[rl.POLICY])
  rng = np.random.default_rng(0)
  tokens, mask = sampling.left_pad([rng.integers(3, 259, size=prompt).tolist() for _ in range(batch)], length=prompt)
  sampler = sampling.Sampler(policy, sampling.SamplingConfig(new, 0.9), sampling.TokenIds(eos_id=-1))  # full length
  key = jax.random.PRNGKey(1)
  sample = lambda: jax.block_until_ready(sampler(state.params[rl.POLICY], tokens, mask, key))  # noqa: E731
  sample_s = common.time_fn(sample, 1, iters)
  out = sample()
  rollout = {
    "tokens": np.concatenate([tokens, np.asarray(out.tokens)], 1),
    "input_mask": np.concatenate([mask, np.asarray(out.mask)], 1),
    "response_mask": np.asarray(out.mask),
    "reward": rng.normal(size=batch).astype(np.float32),
  }
  with partitioning.axis_rules(mesh, partitioning.DEFAULT_RULES):
    sharded = partitioning.shard_batch(rollout, mesh)
    targets_fn = functools.partial(jax.jit(objective.targets), state.params, ref, sharded, np.float32(0.05))
    rollout_s = common.time_fn(lambda: jax.block_until_ready(targets_fn()), 1, iters)
    targets, _ = targets_fn()
  batch_arrays = {k: v for k, v in rollout.items() if k != "reward"} | {k: np.asarray(v) for k, v in targets.items()}
  holder = {"state": state}

  def update():
    holder["state"], metrics = rl_trainer.step(holder["state"], batch_arrays, key)
    jax.block_until_ready(metrics)

  update_s = common.time_fn(update, 1, iters)
  seq = prompt + new
  fwd = common.train_flops_per_token(config, seq) / 3  # one forward pass per token
  # Rollout pass: policy + reference + value forwards; update: policy + value forward and backward.
  rollout_flops, update_flops = 3 * fwd * batch * seq, 2 * 3 * fwd * batch * seq
  peak = common.device_peak_flops()
  mfu = lambda flops, s: None if peak is None else flops / s / (peak * jax.device_count())  # noqa: E731
  return {
    "preset": preset,
    "dtype": dtype,
    "batch": batch,
    "prompt": prompt,
    "new": new,
    "sample_s": sample_s,
    "sample_new_tokens_per_s": batch * new / sample_s,
    "rollout_pass_s": rollout_s,
    "rollout_tokens_per_s": batch * seq / rollout_s,
    "rollout_tflops": rollout_flops / 1e12,
    "rollout_mfu": mfu(rollout_flops, rollout_s),
    "update_s": update_s,
    "update_tokens_per_s": batch * seq / update_s,
    "update_tflops": update_flops / 1e12,
    "update_mfu": mfu(update_flops, update_s),
    "iteration_s": sample_s + rollout_s + update_s,
    "peak_mem_gb": common.peak_memory_gb(),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="tiny", choices=sorted(models.PRESETS))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--prompt", type=int, default=384)
  parser.add_argument("--new", type=int, default=64)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--iters", type=int, default=3)
  common.add_output_flags(parser)
  args = parser.parse_args()
  row = run(args.preset, args.batch, args.prompt, args.new, args.dtype, args.iters)
  common.report(f"rl_{args.preset}_{args.dtype}", row, args.out)


if __name__ == "__main__":
  main()
