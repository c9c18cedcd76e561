"""Sampling throughput: KV-cache decoding against recomputing the whole sequence each step,
and (--peer, in its own process) against transformers' `generate` with its KV cache on the same
left-padded prompts, at temperature 1, no top-k/top-p, never stopping early.

python -m benchmarks.bench_sampling --preset tiny --batch 16 --prompt 256 --new 128 --peer
python -m benchmarks.bench_sampling --preset gemma3_1b --dtype bfloat16 --batch 64 --no_recompute --peer   # GPU

--before adds a row of the sampler as it was before it donated its cache to the decode loop and
stopped computing a log_softmax per step that nobody reads (logprobs=True, donate_cache=False),
timed in the same run, with the compiled decode loop's memory (XLA's memory analysis: temporary
buffers and the bytes aliased to a donated input) for each, and the ratio.

--full_local_cache adds a row of our sampler keeping every token in Gemma's local layers rather
than a ring of the sliding window's slots (models.layer_slots), with `cache_gb` for each: the
ring's gain grows with prompt + new past the window (512 in Gemma 3).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from benchmarks import common
from rlaif_jax import models, sampling


def prompts(batch: int, prompt: int):
  """Left-padded [batch, prompt] prompts of random lengths between prompt / 2 and prompt."""
  rng = np.random.default_rng(0)
  lengths = rng.integers(prompt // 2, prompt + 1, size=batch)
  return sampling.left_pad([rng.integers(3, 259, size=n).tolist() for n in lengths], length=prompt)


def timing_row(impl: str, preset, dtype, batch, prompt, new, first_s: float, cached_s: float) -> dict:
  """What both sides report: the shape, the first (compiling) call and the cached-sampling rate."""
  return {
    "impl": impl,
    "preset": preset,
    "dtype": dtype,
    "batch": batch,
    "prompt": prompt,
    "new": new,
    "first_call_s": first_s,
    "cached_s": cached_s,
    "cached_new_tokens_per_s": batch * new / cached_s,
  }


def cache_gb(config: models.TransformerConfig, batch: int, length: int, local_ring: bool) -> float:
  """Bytes of the keys and values a sampler's cache keeps, in GB."""
  slots = sum(models.layer_slots(config, length, local_ring))
  return 2 * batch * slots * config.num_kv_heads * config.head_dim * np.dtype(config.dtype).itemsize / 1e9


def decode_memory_gb(sampler: sampling.Sampler, params, tokens, mask, key, k: int) -> dict:
  """The compiled decode loop's buffers by XLA's memory analysis: temporaries, and the bytes of
  its outputs that alias a donated input (the cache updated in place)."""
  logits, cache, pos = sampler._prefill(params, tokens, mask, repeats=k)
  stats = sampler._decode.lower(params, logits, cache, pos, key).compile().memory_analysis()
  if stats is None:
    return {}
  return {"decode_temp_gb": stats.temp_size_in_bytes / 1e9, "decode_alias_gb": stats.alias_size_in_bytes / 1e9}


def run(
  preset: str,
  batch: int,
  prompt: int,
  new: int,
  dtype: str,
  iters: int,
  k: int,
  recompute: bool,
  eos_check_every=None,
  local_ring: bool = True,
  logprobs: bool = False,
  donate_cache: bool = True,
) -> dict:
  config = models.preset(preset, dtype=dtype)
  model = models.Transformer(config)
  params = jax.jit(lambda r: models.init_params(model, r))(jax.random.PRNGKey(0))
  tokens, mask = prompts(batch // k, prompt)  # k samples of each: its prefill computed once
  # never stop early; the all-ended check still runs every eos_check_every steps
  cfg = sampling.SamplingConfig(max_new_tokens=new, temperature=1.0, eos_check_every=eos_check_every)
  no_eos = sampling.TokenIds(eos_id=-1)  # every row runs to `new` tokens
  sampler = sampling.Sampler(model, cfg, no_eos, local_ring, logprobs=logprobs, donate_cache=donate_cache)
  key = jax.random.PRNGKey(1)

  start = time.perf_counter()
  jax.block_until_ready(sampler(params, tokens, mask, key, repeats=k).tokens)  # compiles prefill and decode
  first_s = time.perf_counter() - start
  prefill = lambda: jax.block_until_ready(sampler._prefill(params, tokens, mask, repeats=k))  # noqa: E731
  prefill_s = common.time_fn(prefill, 0, iters)
  cached_s = common.time_fn(
    lambda: jax.block_until_ready(sampler(params, tokens, mask, key, repeats=k).tokens), 0, iters
  )
  row = timing_row(common.OURS, preset, dtype, batch, prompt, new, first_s, cached_s) | {
    "samples_per_prompt": k,
    "prefill_s": prefill_s,
    "decode_new_tokens_per_s": batch * new / max(cached_s - prefill_s, 1e-9),
    "decode_ms_per_step": 1e3 * (cached_s - prefill_s) / new,
    "eos_check_every": sampling.decode_steps_per_check(cfg),
    "local_ring": local_ring,
    "cache_gb": cache_gb(config, batch, prompt + new, local_ring),
    **decode_memory_gb(sampler, params, tokens, mask, key, k),
    "peak_mem_gb": common.peak_memory_gb(),
  }
  if recompute:
    tokens, mask = np.repeat(tokens, k, axis=0), np.repeat(mask, k, axis=0)
    f = lambda: jax.block_until_ready(
      sampling.sample_without_cache(model, params, tokens, mask, key, cfg, no_eos).tokens
    )  # noqa: E731
    recompute_s = common.time_fn(f, 1, max(1, iters // 2))
    row.update(
      recompute_s=recompute_s,
      recompute_new_tokens_per_s=batch * new / recompute_s,
      cache_speedup=recompute_s / cached_s,
    )
  return row


def run_peer(preset: str, batch: int, prompt: int, new: int, dtype: str, iters: int, k: int) -> dict:
  """transformers' generate, sampling at temperature 1 from the full distribution, exactly new
  tokens; k samples per prompt as num_return_sequences."""
  import torch

  from benchmarks import peer

  model = peer.build_model(models.preset(preset, dtype=dtype), peer.DTYPES[dtype]).eval()
  ids, attention, _ = peer.left_padded(*prompts(batch // k, prompt))
  kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
  kwargs["num_return_sequences"] = k

  @torch.inference_mode()
  def generate():
    out = model.generate(input_ids=ids, attention_mask=attention, pad_token_id=0, **kwargs)
    peer.sync()
    if out.shape != (batch, prompt + new):
      raise RuntimeError(f"generate returned {tuple(out.shape)}, not {(batch, prompt + new)}")

  torch.manual_seed(1)
  peer.reset_peak_memory()
  start = time.perf_counter()
  generate()
  first_s = time.perf_counter() - start
  cached_s = common.time_fn(generate, 0, iters)
  row = timing_row(common.PEER, preset, dtype, batch, prompt, new, first_s, cached_s) | {"samples_per_prompt": k}
  return row | {"peak_mem_gb": peer.peak_memory_gb()} | peer.versions()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="tiny", choices=sorted(models.PRESETS))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--prompt", type=int, default=256)
  parser.add_argument("--new", type=int, default=128)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--samples_per_prompt", type=int, default=1, help="rows per prompt (batch / this prompts)")
  parser.add_argument("--no_recompute", action="store_true", help="skip the slow no-cache baseline")
  parser.add_argument("--before", action="store_true", help="also time the sampler before donation and opt-in logprobs")
  parser.add_argument(
    "--full_local_cache", action="store_true", help="also time a cache of every token in local layers"
  )
  parser.add_argument(
    "--eos_check_every", type=int, default=None, help="decode steps per all-ended check (default: 4 on GPU, 1 on CPU)"
  )
  common.add_output_flags(parser, peer_help="also time transformers' generate on the same prompts")
  args = parser.parse_args()
  if args.batch % args.samples_per_prompt:
    parser.error(f"--batch={args.batch} is not a multiple of --samples_per_prompt={args.samples_per_prompt}")
  shape = (args.preset, args.batch, args.prompt, args.new, args.dtype, args.iters, args.samples_per_prompt)
  if args.peer_child:
    common.peer_child(args.peer_child, run_peer, *shape)
    return
  argv = common.child_argv(sys.argv[1:])
  peer_rows = common.peer_rows("benchmarks.bench_sampling", argv, args.peer_timeout) if args.peer else []
  try:
    rows = [run(*shape, not args.no_recompute, args.eos_check_every)]
  except Exception as e:  # out of memory, say: reported beside the peer's row
    rows = [common.failed(common.OURS, e)]
  if args.before:
    try:
      old = run(*shape, False, args.eos_check_every, logprobs=True, donate_cache=False)
    except Exception as e:
      old = common.failed(common.OURS + " (before)", e)
    keys = ["decode_ms_per_step", "decode_new_tokens_per_s", "decode_temp_gb", "decode_alias_gb"]
    rows += [old | {"impl": common.OURS + " (before)"}, common.ratio_row(rows[0], old, keys) | {"impl": "now/before"}]
  if args.full_local_cache:
    try:
      full = run(*shape, False, args.eos_check_every, local_ring=False) | {"impl": common.OURS + " (full local)"}
    except Exception as e:  # the larger cache may not fit where the ring does
      full = common.failed(common.OURS + " (full local)", e)
    keys = ["decode_new_tokens_per_s", "cached_new_tokens_per_s", "cache_gb"]
    rows += [full, common.ratio_row(rows[0], full, keys) | {"impl": "ring/full"}]
  for theirs in peer_rows:
    rows.append(theirs)
    if "error" not in theirs and "error" not in rows[0]:
      rows.append(common.ratio_row(rows[0], theirs, ["cached_new_tokens_per_s", "peak_mem_gb"]))
  name = (
    f"sampling_{args.preset}_{args.dtype}"
    + ("_ring" if args.full_local_cache else "")
    + ("_before" if args.before else "")
  )
  common.report(name, rows, args.out)
  sys.exit(common.exit_status(rows))


if __name__ == "__main__":
  main()
