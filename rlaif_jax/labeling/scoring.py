"""The labeler's math on arrays (names fixed by docs/API.md). All float32, jit-compatible."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def preference_from_logits(logit_1: Array, logit_2: Array) -> Array:
  """P("1") = exp(l1) / (exp(l1) + exp(l2)) = sigmoid(l1 - l2), stable for large logits. [B]."""
  return jax.nn.sigmoid(jnp.asarray(logit_1, jnp.float32) - jnp.asarray(logit_2, jnp.float32))


def debias_preference(p1_ab: Array, p1_ba: Array) -> Array:
  """Position-debiased P(A preferred): (P_AB("1") + P_BA("2")) / 2 = (p1_ab + 1 - p1_ba) / 2. [B]."""
  return (jnp.asarray(p1_ab, jnp.float32) + 1.0 - jnp.asarray(p1_ba, jnp.float32)) / 2.0


def direct_score(score_logits: Array) -> Array:
  """Expected 1-10 score under softmax(score_logits [B, 10]), mapped to [-1, 1]: (s - 5.5) / 4.5."""
  probs = jax.nn.softmax(jnp.asarray(score_logits, jnp.float32), axis=-1)
  expected = jnp.sum(probs * jnp.arange(1, 11, dtype=jnp.float32), axis=-1)
  return (expected - 5.5) / 4.5
