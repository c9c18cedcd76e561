"""Deterministic, resumable SFT batches from (prompt, target) text pairs.

`batch(step)` is a pure function of the step: examples are shuffled per epoch from the seed,
so a run resumed at step s sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rlaif_jax import partitioning


def encode_example(vocab, prompt: str, target: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Token ids of prompt + target + EOS, and the mask of target tokens (target and EOS).

  When too long, the prompt is cut from the left, so the target and the prompt's end (the
  'TL;DR:' cue) survive; a target longer than max_len keeps its first tokens.
  """
  p = list(vocab.encode(prompt))
  t = list(vocab.encode(target)) + [vocab.eos_id]
  t = t[:max_len]
  p = p[max(0, len(p) - (max_len - len(t))) :] if len(p) + len(t) > max_len else p
  tokens = np.asarray(p + t, np.int32)
  return tokens, np.asarray([0] * len(p) + [1] * len(t), bool)


def pad_to(rows: Sequence[np.ndarray], length: int, value=0) -> np.ndarray:
  out = np.full((len(rows), length), value, dtype=np.asarray(rows[0]).dtype)
  for i, r in enumerate(rows):
    out[i, : len(r)] = r
  return out


@dataclasses.dataclass
class SFTDataset:
  """Right-padded batches {tokens, input_mask, loss_mask} of shape [batch_size, max_len]."""

  examples: Sequence[tuple[str, str]]
  vocab: object
  max_len: int
  batch_size: int
  seed: int = 0

  def __post_init__(self):
    if not self.examples:
      raise ValueError("SFTDataset: no examples")
    encoded = [encode_example(self.vocab, p, t, self.max_len) for p, t in self.examples]
    self.tokens = pad_to([e[0] for e in encoded], self.max_len, self.vocab.pad_id)
    self.loss_mask = pad_to([e[1] for e in encoded], self.max_len, False)
    self.input_mask = pad_to([np.ones(len(e[0]), bool) for e in encoded], self.max_len, False)

  def __len__(self):
    return len(self.examples)

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
    return {"tokens": self.tokens[idx], "input_mask": self.input_mask[idx], "loss_mask": self.loss_mask[idx]}

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


def split_examples(examples: Sequence, eval_fraction: float, seed: int = 0) -> tuple[list, list]:
  """A seeded train/eval split."""
  perm = np.random.default_rng(seed).permutation(len(examples))
  n_eval = int(round(len(examples) * eval_fraction))
  return [examples[i] for i in perm[n_eval:]], [examples[i] for i in perm[:n_eval]]
