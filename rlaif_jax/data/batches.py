"""Deterministic, resumable batches over in-memory arrays.

`batch(step)` is a pure function of the step: rows are shuffled per epoch from the seed, so
a run resumed at step s sees exactly the batches an uninterrupted run would. Every process
holds the arrays and takes its own contiguous rows of each global batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rlaif_jax import partitioning


class ArrayDataset:
  """Global batches of `batch_size` rows from arrays that share their leading axis."""

  def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int = 0):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"ArrayDataset: arrays differ in length: {sizes}")
    if not next(iter(sizes.values())):
      raise ValueError("ArrayDataset: no examples")
    self.arrays = dict(arrays)
    self.batch_size = batch_size
    self.seed = seed

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def _indices(self, step: int) -> np.ndarray:
    n, b = len(self), self.batch_size
    flat = np.arange(step * b, (step + 1) * b)
    epochs, offsets = flat // n, flat % n
    out = np.empty(b, np.int64)
    for epoch in np.unique(epochs):
      perm = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
      out[epochs == epoch] = perm[offsets[epochs == epoch]]
    return out

  def _rows(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in self.arrays.items()}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch for `step`."""
    return self._rows(self._indices(step)[partitioning.process_slice(self.batch_size)])

  def global_batch(self, step: int) -> dict[str, np.ndarray]:
    """All rows of step's batch (for single-process references and tests)."""
    return self._rows(self._indices(step))

  def eval_batches(self) -> list[dict[str, np.ndarray]]:
    """The whole set in order, in full batches (a short remainder is dropped)."""
    n = (len(self) // self.batch_size) * self.batch_size
    sl = partitioning.process_slice(self.batch_size)
    return [self._rows(np.arange(i, i + self.batch_size)[sl]) for i in range(0, n, self.batch_size)]
