"""Scoring in fixed-size batches: the one loop behind the labeler, reward scorers and evaluators.

Work of N rows runs as ceil(N / batch_size) batches of exactly batch_size rows (the last one
padded), so a jitted function compiles once per row shape. Each batch is placed on the mesh
from every process's own rows and its outputs are gathered back to the host, so the same code
runs on one device, a mesh of local devices or a mesh that spans processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from rlaif_jax import partitioning

Batch = tuple[int, tuple[np.ndarray, ...]]  # (real rows n <= batch_size, arrays of batch_size rows)


def fixed_batches(arrays: Sequence[np.ndarray], batch_size: int) -> Iterable[Batch]:
  """Chunks of batch_size rows of arrays [N, ...]; the last chunk is padded with zero rows."""
  total = len(arrays[0])
  for start in range(0, total, batch_size):
    chunk = tuple(a[start : start + batch_size] for a in arrays)
    n = len(chunk[0])
    if n < batch_size:
      chunk = tuple(np.concatenate([a, np.zeros((batch_size - n,) + a.shape[1:], a.dtype)]) for a in chunk)
    yield n, chunk


def run_batches(fn: Callable, batches: Iterable[Batch], mesh, rules=partitioning.DEFAULT_RULES) -> np.ndarray:
  """fn(*global_arrays) -> [batch_size, ...] on each batch, its real rows concatenated on the host.

  fn is usually jitted with its parameters bound (e.g. functools.partial(jitted, params)).
  Returns [N, ...] for N real rows in all; an empty float32 array for no batches.
  """
  outputs = []
  with partitioning.axis_rules(mesh, rules):
    for n, arrays in batches:
      placed = partitioning.put_batch({str(i): a for i, a in enumerate(arrays)}, mesh, rules)
      out = fn(*(placed[str(i)] for i in range(len(arrays))))
      outputs.append(partitioning.to_host(out)[:n])
  return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)
