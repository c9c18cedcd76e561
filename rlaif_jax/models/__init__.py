"""Decoder models of the Gemma 3 and Llama families: configuration, presets, layers and the transformer."""

from rlaif_jax.models import lora
from rlaif_jax.models.config import (
  PRESETS,
  AttentionType,
  TransformerConfig,
  gemma3_1b,
  gemma3_4b,
  gemma3_270m,
  llama,
  preset,
  smollm2_135m,
  tiny,
  tiny_llama,
)
from rlaif_jax.models.layers import RMSNorm, apply_rope, attention_mask
from rlaif_jax.models.lora import LoraConfig
from rlaif_jax.models.params import load_model_params, param_shardings, place_params
from rlaif_jax.models.scoring import TokenScores, score_tokens, token_values
from rlaif_jax.models.source import LoadedModel, ModelSource
from rlaif_jax.models.transformer import (
  Cache,
  Transformer,
  count_params,
  extend_cache,
  init_cache,
  init_params,
  layer_slots,
  positions_from_mask,
  segment_positions,
)

__all__ = [
  "PRESETS",
  "AttentionType",
  "Cache",
  "LoadedModel",
  "LoraConfig",
  "ModelSource",
  "RMSNorm",
  "TokenScores",
  "Transformer",
  "TransformerConfig",
  "apply_rope",
  "attention_mask",
  "count_params",
  "extend_cache",
  "gemma3_1b",
  "gemma3_4b",
  "gemma3_270m",
  "init_cache",
  "init_params",
  "layer_slots",
  "llama",
  "load_model_params",
  "lora",
  "param_shardings",
  "place_params",
  "positions_from_mask",
  "preset",
  "score_tokens",
  "segment_positions",
  "token_values",
  "smollm2_135m",
  "tiny",
  "tiny_llama",
]
