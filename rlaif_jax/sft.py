"""Supervised fine-tuning: masked next-token cross-entropy on target tokens.

Batches hold `tokens` [B, L], `input_mask` [B, L] (False on padding) and `loss_mask` [B, L]
(True on the target tokens, e.g. the summary and its EOS, False on the prompt); packed batches
(data.pack_sft_features) add `segment_ids` [B, L].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlaif_jax import losses
from rlaif_jax.models import Transformer, score_tokens


@dataclasses.dataclass(frozen=True)
class SFTObjective:
  """Wraps a decoder as `loss_fn(params, batch, rng) -> (loss, metrics)` for the trainer."""

  model: Transformer

  def loss_fn(self, params, batch, rng):
    del rng  # deterministic: no dropout
    _, targets, target_mask = losses.next_token_inputs(batch["tokens"], batch["loss_mask"])
    segments = batch.get("segment_ids")
    if segments is not None:  # several examples per row: no target is the next example's first token
      target_mask = target_mask & (segments[:, 1:] == segments[:, :-1])
    logp, best, _ = score_tokens(self.model, params, batch["tokens"], batch["input_mask"], segment_ids=segments)
    mask = target_mask.astype(jnp.float32)
    count = jnp.sum(mask)
    loss = -jnp.sum(logp * mask) / jnp.maximum(count, 1.0)  # masked next-token cross-entropy
    accuracy = jnp.sum((best == targets) * mask) / jnp.maximum(count, 1.0)
    return loss, {"accuracy": accuracy, "target_tokens": count, "weight": count}

  def eval_metrics(self, params, batch):
    """Loss and accuracy on a batch, with the token count to average over batches."""
    loss, metrics = self.loss_fn(params, batch, jax.random.PRNGKey(0))
    return {"loss": loss, "accuracy": metrics["accuracy"], "weight": metrics["weight"]}
