"""A sequence's tokens scored under a model, in one forward pass: the one way every objective
reads log-probs (SFT, RRHF, DPO, the RL estimators), entropies and a value head's scores.

Position t's hidden state predicts token t + 1, so scoring tokens[:, start:] runs the model over
tokens[:, :-1] and reads the hidden states from start - 1 on: start=1 scores every token after
the first (SFT, RRHF, DPO), start=P every response token after a P-token prompt (RL).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlaif_jax.models.transformer import Transformer

Array = jax.Array


class TokenScores(NamedTuple):
  logp: Array  # [B, T - start] log p(tokens[:, start:]) given what precedes each, float32
  best: Array  # [B, T - start] the model's most likely token at each of those positions
  entropy: Array  # [B, T - start] entropy of the model's distribution there, float32


def predicting_hidden(
  model: Transformer, params, tokens: Array, input_mask: Array, start: int = 1, segment_ids: Array | None = None
) -> Array:
  """The final hidden states at the positions that predict tokens[:, start:]: [B, T - start, D]."""
  segments = None if segment_ids is None else segment_ids[:, :-1]
  hidden, _ = model.apply(
    {"params": params}, tokens[:, :-1], input_mask[:, :-1], segment_ids=segments, method=Transformer.hidden_states
  )
  return hidden[:, start - 1 :]


def score_tokens(
  model: Transformer, params, tokens: Array, input_mask: Array, start: int = 1, segment_ids: Array | None = None
) -> TokenScores:
  """log p, argmax and entropy for tokens[:, start:] (tokens, input_mask [B, T]; segment_ids for
  rows packing several examples), from vocabulary slices (Transformer.token_stats): the [B, T, V]
  logits never exist at once."""
  hidden = predicting_hidden(model, params, tokens, input_mask, start, segment_ids)
  return TokenScores(*model.apply({"params": params}, hidden, tokens[:, start:], method=Transformer.token_stats))


def token_values(model: Transformer, params, tokens: Array, input_mask: Array, start: int = 1) -> Array:
  """A scalar-head model's value at each position predicting tokens[:, start:]: [B, T - start]."""
  hidden = predicting_hidden(model, params, tokens, input_mask, start)
  return model.apply({"params": params}, hidden, method=Transformer.scores).astype(jnp.float32)
