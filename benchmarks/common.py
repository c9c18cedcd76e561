"""Shared helpers for the benchmark scripts: FLOP counts, peak FLOP/s, timing and output."""

from __future__ import annotations

import json
import os
import platform
import time

import jax

from rlaif_jax import models

# Dense bf16 peak FLOP/s per device, for MFU; None where no peak is known (CPUs).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5e": 197e12, "TPU v5": 459e12}


def device_peak_flops() -> float | None:
  kind = jax.devices()[0].device_kind
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


def matmul_params(config: models.TransformerConfig) -> int:
  """Parameters that take part in a matmul per token: all but norms and the embedding lookup,
  plus the tied output projection."""
  c = config
  per_layer = c.embed_dim * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads) + 3 * c.embed_dim * c.hidden_dim
  return c.num_layers * per_layer + c.vocab_size * c.embed_dim


def attention_flops_per_token(config: models.TransformerConfig, seq_len: int) -> float:
  """Forward QK^T and AV FLOPs per token, averaged over a causal sequence, windows respected."""
  total = 0.0
  for kind in config.attention_types:
    span = seq_len if kind == models.AttentionType.GLOBAL else min(seq_len, config.sliding_window)
    total += 2 * 2 * config.num_heads * config.head_dim * span / (2 if span == seq_len else 1)
  return total


def train_flops_per_token(config: models.TransformerConfig, seq_len: int) -> float:
  """Forward + backward = 3x forward: 6 N + 3 x attention."""
  return 6 * matmul_params(config) + 3 * attention_flops_per_token(config, seq_len)


def time_fn(fn, warmup: int = 2, iters: int = 5) -> float:
  """Median seconds per call of fn(), which must block until its work is done."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def environment() -> dict:
  d = jax.devices()[0]
  return {
    "device_kind": d.device_kind,
    "platform": d.platform,
    "device_count": jax.device_count(),
    "jax": jax.__version__,
    "host": platform.node(),
    "cpus": os.cpu_count(),
  }


def print_table(rows: list[dict], columns: list[str]) -> None:
  widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
  print("  ".join(c.ljust(widths[c]) for c in columns))
  for r in rows:
    print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def write_json(name: str, payload: dict, out_dir: str | None = None) -> str:
  out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{name}.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2)
  return path


def report(name: str, row: dict, out_dir: str | None = None) -> str:
  """Prints the row as a table and writes it, with the environment, to <name>.json."""
  print_table([row], list(row))
  path = write_json(name, {"environment": environment(), "rows": [row]}, out_dir)
  print(f"wrote {path}")
  return path
