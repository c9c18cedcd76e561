"""Gemma-3-style decoder models: configuration, presets, layers and the transformer."""

from rlaif_jax.models.config import (
  PRESETS,
  AttentionType,
  TransformerConfig,
  gemma3_1b,
  gemma3_270m,
  preset,
  tiny,
)
from rlaif_jax.models.layers import RMSNorm, apply_rope, attention_mask
from rlaif_jax.models.params import load_model_params, param_shardings, place_params
from rlaif_jax.models.source import LoadedModel, ModelSource
from rlaif_jax.models.transformer import (
  Cache,
  Transformer,
  count_params,
  init_cache,
  init_params,
  positions_from_mask,
)

__all__ = [
  "PRESETS",
  "AttentionType",
  "Cache",
  "LoadedModel",
  "ModelSource",
  "RMSNorm",
  "Transformer",
  "TransformerConfig",
  "apply_rope",
  "attention_mask",
  "count_params",
  "gemma3_1b",
  "gemma3_270m",
  "init_cache",
  "init_params",
  "load_model_params",
  "param_shardings",
  "place_params",
  "positions_from_mask",
  "preset",
  "tiny",
]
