"""Loss functions on arrays. Log-softmax is always taken in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def token_log_probs(logits: Array, targets: Array) -> Array:
  """log softmax(logits)[target]: logits [B, T, V], targets [B, T] -> [B, T] float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def masked_token_cross_entropy(logits: Array, targets: Array, mask: Array) -> tuple[Array, Array]:
  """Mean cross-entropy over masked tokens, and the number of those tokens.

  logits: [B, T, V]; targets, mask: [B, T]. Returns (loss, count), loss 0 when count is 0.
  """
  mask = mask.astype(jnp.float32)
  nll = -token_log_probs(logits, targets) * mask
  count = jnp.sum(mask)
  return jnp.sum(nll) / jnp.maximum(count, 1.0), count


def next_token_inputs(tokens: Array, loss_mask: Array) -> tuple[Array, Array, Array]:
  """Shifts a sequence for next-token prediction: (inputs, targets, target_mask).

  Position t predicts token t + 1; a target counts where loss_mask marks token t + 1.
  """
  return tokens[:, :-1], tokens[:, 1:], loss_mask[:, 1:]
