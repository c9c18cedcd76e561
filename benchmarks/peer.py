"""The benchmarks' peer: Hugging Face transformers' Gemma 3 (PyTorch) at our presets' shapes.

Imported only in the peer's own process (common.peer_rows), so the benchmarks run without
torch where no --peer is asked for. The model is transformers' text-only Gemma3ForCausalLM
with SDPA attention, eager (no torch.compile), as a user would load it.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import transformers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from rlaif_jax import models

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device() -> torch.device:
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name() -> str:
  return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def hf_config(config: models.TransformerConfig) -> Gemma3TextConfig:
  """The transformers config of the same network; EOS is None so generation never stops early."""
  layer_types = [
    "full_attention" if t == models.AttentionType.GLOBAL else "sliding_attention" for t in config.attention_types
  ]
  global_rope = {"rope_type": "default", "rope_theta": config.rope_base_global}
  if config.rope_scale_global != 1.0:
    global_rope = {**global_rope, "rope_type": "linear", "factor": config.rope_scale_global}
  fields = dict(
    vocab_size=config.vocab_size,
    hidden_size=config.embed_dim,
    intermediate_size=config.hidden_dim,
    num_hidden_layers=config.num_layers,
    num_attention_heads=config.num_heads,
    num_key_value_heads=config.num_kv_heads,
    head_dim=config.head_dim,
    hidden_activation="gelu_pytorch_tanh",
    rms_norm_eps=config.norm_eps,
    query_pre_attn_scalar=config.query_pre_attn_scalar or config.head_dim,
    sliding_window=config.sliding_window,
    layer_types=layer_types,
    final_logit_softcapping=config.final_logit_soft_cap,
    attn_logit_softcapping=config.attn_logits_soft_cap,
    max_position_embeddings=config.max_len,
    tie_word_embeddings=True,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=None,
    attn_implementation="sdpa",
  )
  if "rope_parameters" in inspect.signature(Gemma3TextConfig.__init__).parameters:  # transformers >= 5
    fields["rope_parameters"] = {
      "full_attention": global_rope,
      "sliding_attention": {"rope_type": "default", "rope_theta": config.rope_base_local},
    }
  else:
    fields |= dict(rope_theta=config.rope_base_global, rope_local_base_freq=config.rope_base_local)
    fields["rope_scaling"] = global_rope if global_rope["rope_type"] == "linear" else None
  return Gemma3TextConfig(**fields)


def build_model(config: models.TransformerConfig, dtype: torch.dtype, tensors: dict | None = None):
  """Gemma3ForCausalLM on device() in dtype, randomly initialized or loaded from tensors
  (Hugging Face names -> numpy arrays, e.g. common.random_checkpoint)."""
  with torch.device(device()):
    model = Gemma3ForCausalLM(hf_config(config))
  if tensors is not None:
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to the embedding
      raise ValueError(f"checkpoint does not fit: missing {missing}, unexpected {unexpected}")
  return model.to(dtype)


def sync() -> None:
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def reset_peak_memory() -> None:
  if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()


def peak_memory_gb() -> float | None:
  return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def versions() -> dict:
  return {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "attention": "sdpa",
    "peer_device": device_name(),
  }


def left_padded(tokens: np.ndarray, mask: np.ndarray):
  """Device tensors for a left-padded batch: ids, attention mask and positions counted over
  real tokens (as our positions_from_mask; transformers' forward would count padding too)."""
  ids = torch.from_numpy(np.asarray(tokens, np.int64)).to(device())
  attention = torch.from_numpy(np.asarray(mask, np.int64)).to(device())
  positions = (attention.cumsum(-1) - 1).clamp(min=0)
  return ids, attention, positions
