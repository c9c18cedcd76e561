"""Shared helpers for the benchmark scripts: FLOP counts, peak FLOP/s, timing and output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from rlaif_jax import models
from rlaif_jax.models import loading

# Dense bf16 peak FLOP/s per device, for MFU; None where no peak is known (CPUs).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5e": 197e12, "TPU v5": 459e12}


def device_peak_flops(kind: str | None = None) -> float | None:
  """Peak FLOP/s of a device kind (default: jax's first device); the peer names its torch device."""
  kind = kind or jax.devices()[0].device_kind
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


def forward_flops_per_token(config: models.TransformerConfig, seq_len: int, logits: bool = True) -> float:
  """One forward pass: 2 N + attention. Without logits the output projection is left out
  (prefill scoring, which reads a few answer logits at one position)."""
  n = matmul_params(config) - (0 if logits else config.vocab_size * config.embed_dim)
  return 2 * n + attention_flops_per_token(config, seq_len)


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


def mfu(flops: float, seconds: float, peak: float | None, devices: int = 1) -> float | None:
  return None if peak is None else flops / seconds / (peak * devices)


def peak_memory_gb() -> float | None:
  """The allocator's peak on jax's first device since start (None where it keeps no stats: CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None


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


def columns_of(rows: list[dict]) -> list[str]:
  """Every key of the rows, in first-seen order."""
  return list(dict.fromkeys(k for r in rows for k in r))


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


def report(name: str, rows: dict | list[dict], out_dir: str | None = None) -> str:
  """Prints the rows (or one row) as a table and writes them, with the environment, to <name>.json."""
  rows = [rows] if isinstance(rows, dict) else rows
  print_table(rows, columns_of(rows))
  path = write_json(name, {"environment": environment(), "rows": rows}, out_dir)
  print(f"wrote {path}")
  return path


def add_output_flags(parser, peer_help: str | None = None) -> None:
  """--out (the JSON's folder); with peer_help, the transformers peer's flags too: --peer (what
  it runs), --peer_timeout, and the hidden --peer_child that peer_rows passes its child."""
  if peer_help:
    parser.add_argument("--peer", action="store_true", help=peer_help)
    parser.add_argument("--peer_timeout", type=float, default=600.0)
    parser.add_argument("--peer_child", default="", help=argparse.SUPPRESS)  # set by peer_rows
  parser.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results)")


# ---------------------------------------------------------------- the transformers peer

OURS, PEER = "rlaif_jax", "transformers"


def peer_rows(module: str, argv: list[str], timeout: float) -> list[dict]:
  """Runs `python -m module *argv --peer_child FILE` (the benchmark's transformers side) in a
  process of its own and returns the rows it wrote to FILE; a failure comes back as a row
  with an error. Called before our side touches the accelerator, so each side has all of its
  memory, and torch's and jax's CUDA libraries never meet in one process. The child sees
  JAX_PLATFORMS=cpu, so importing rlaif_jax there takes no accelerator memory."""
  handle, path = tempfile.mkstemp(suffix=".json")
  os.close(handle)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", module, *argv, "--peer_child", path]
  try:
    subprocess.run(command, env=env, timeout=timeout, check=True)
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except subprocess.TimeoutExpired:
    error = f"timed out after {timeout:.0f} s"
  except subprocess.CalledProcessError as e:
    error = f"exited with status {e.returncode}"
  except (OSError, ValueError) as e:  # no rows written, or not JSON
    error = f"{type(e).__name__}: {e}"
  finally:
    os.remove(path)
  print(f"peer failed: {error}", flush=True)
  return [{"impl": PEER, "error": error}]


OURS_FAILED = 3  # the exit status of a benchmark whose own side failed (its JSON is written all the same)


def exit_status(rows: list[dict]) -> int:
  return OURS_FAILED if "error" in rows[0] else 0


def failed(impl: str, e: Exception) -> dict:
  """A row for a side that raised (e.g. out of accelerator memory), so the other side's row
  and the failure are still reported."""
  print(f"{impl} failed: {type(e).__name__}: {e}", flush=True)
  first = (str(e).strip().splitlines() or [""])[0]
  return {"impl": impl, "error": f"{type(e).__name__}: {first}"[:240]}


def child_argv(argv: list[str]) -> list[str]:
  """The parent's arguments for the peer child: without --peer (which would recurse)."""
  return [a for a in argv if a != "--peer"]


def peer_child(path: str, run, *args) -> None:
  """In the peer's process: writes [run(*args)] (or the failure, as a row) to path for peer_rows."""
  try:
    rows = [run(*args)]
  except Exception as e:  # out of memory, say: reported beside our row
    rows = [failed(PEER, e)]
  with open(path, "w", encoding="utf-8") as f:
    json.dump(rows, f)


def ratio_row(ours: dict, peer: dict, keys: list[str]) -> dict:
  """ours / peer for each key both rows have as a number (> 1 on a rate: ours is faster)."""
  row = {"impl": "ours/peer"}
  for k in keys:
    a, b = ours.get(k), peer.get(k)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
      row[k] = a / b
  return row


def random_checkpoint(config: models.TransformerConfig, seed: int = 0) -> dict:
  """Random float32 weights under Hugging Face Gemma 3 names ([out, in] matrices), so both sides
  can start from the same weights: ours through loading.params_from_tensors, the peer through
  load_state_dict. Uniform (a few times faster to draw than normal: 1B of them take seconds)
  with unit-variance outputs for kernels; norm scales are small, but not zero, so they matter."""
  rng = np.random.default_rng(seed)
  names = {path: hf for path, (_, hf) in loading.TOP_TENSORS.items()}
  for i in range(config.num_layers):
    names |= {(f"blocks_{i}", *path): f"model.layers.{i}.{hf}" for path, (_, hf) in loading.LAYER_TENSORS.items()}
  tensors = {}
  for path, name in names.items():
    if not loading._present(path, config):  # biases, an untied output: only what the config has
      continue
    shape = loading._expected_shape(path, config)
    # std 0.1 for norm scales; 1 / sqrt(fan-in) for [out, in] kernels (the embedding's rows are
    # scaled by sqrt(D) on the way in); uniform on [-a, a] has std a / sqrt(3)
    std = 0.1 if len(shape) == 1 else shape[1] ** -0.5
    w = rng.random(shape, dtype=np.float32)
    w -= 0.5
    w *= np.float32(2 * 3**0.5 * std)
    tensors[name] = w
  return tensors


def params_from_checkpoint(config: models.TransformerConfig, tensors: dict) -> dict:
  """Our parameter tree (numpy) from random_checkpoint's tensors."""
  return loading.params_from_tensors(tensors.__getitem__, config, "random", False, "<random_checkpoint>")
