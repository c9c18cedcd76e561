"""Evaluation metrics on arrays (names fixed by docs/API.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def alignment_accuracy(p_first: Array, human_choice: Array) -> Array:
  """Fraction of pairs whose AI argmax equals the human choice.

  p_first [N]: AI probability that the first response is preferred; human_choice [N]: 0 when
  humans preferred the first response, 1 the second. The AI picks the first when p_first > 0.5
  (an exact 0.5 counts as picking the second).
  """
  ai_choice = jnp.where(jnp.asarray(p_first, jnp.float32) > 0.5, 0, 1)
  return jnp.mean((ai_choice == jnp.asarray(human_choice)).astype(jnp.float32))
