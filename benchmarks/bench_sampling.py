"""Sampling throughput: KV-cache decoding against recomputing the whole sequence each step.

python benchmarks/bench_sampling.py --preset tiny --batch 16 --prompt 256 --new 128
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks import common
from rlaif_jax import models, sampling


def run(preset: str, batch: int, prompt: int, new: int, dtype: str, iters: int, recompute: bool) -> dict:
  config = models.preset(preset, dtype=dtype)
  model = models.Transformer(config)
  params = jax.jit(lambda r: models.init_params(model, r))(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  lengths = rng.integers(prompt // 2, prompt + 1, size=batch)
  tokens, mask = sampling.left_pad([rng.integers(3, 259, size=n).tolist() for n in lengths], length=prompt)
  cfg = sampling.SamplingConfig(max_new_tokens=new, temperature=1.0, eos_id=-1)  # never stop early
  sampler = sampling.Sampler(model, cfg)
  key = jax.random.PRNGKey(1)

  prefill_s = common.time_fn(lambda: jax.block_until_ready(sampler._prefill(params, tokens, mask)), 1, iters)
  cached_s = common.time_fn(lambda: jax.block_until_ready(sampler(params, tokens, mask, key).tokens), 1, iters)
  row = {
    "preset": preset,
    "dtype": dtype,
    "batch": batch,
    "prompt": prompt,
    "new": new,
    "prefill_s": prefill_s,
    "cached_s": cached_s,
    "cached_new_tokens_per_s": batch * new / cached_s,
    "decode_new_tokens_per_s": batch * new / max(cached_s - prefill_s, 1e-9),
  }
  if recompute:
    f = lambda: jax.block_until_ready(sampling.sample_without_cache(model, params, tokens, mask, key, cfg).tokens)  # noqa: E731
    recompute_s = common.time_fn(f, 1, max(1, iters // 2))
    row.update(
      recompute_s=recompute_s,
      recompute_new_tokens_per_s=batch * new / recompute_s,
      cache_speedup=recompute_s / cached_s,
    )
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="tiny", choices=sorted(models.PRESETS))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--prompt", type=int, default=256)
  parser.add_argument("--new", type=int, default=128)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--no_recompute", action="store_true", help="skip the slow no-cache baseline")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  row = run(args.preset, args.batch, args.prompt, args.new, args.dtype, args.iters, not args.no_recompute)
  common.report(f"sampling_{args.preset}_{args.dtype}", row, args.out)


if __name__ == "__main__":
  main()
