"""The decoder's configuration: one frozen dataclass, passed whole, and its presets."""

from __future__ import annotations

import dataclasses
import enum

import jax.numpy as jnp


class AttentionType(enum.Enum):
  GLOBAL = "global"
  LOCAL = "local"  # sliding window


ACTIVATIONS = ("gelu_tanh", "silu")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shapes and numerics of a decoder of the Gemma 3 or the Llama family.

  The defaults are Gemma 3, represented exactly: (1 + scale) RMSNorms before and after attention
  and MLP, GeGLU MLP, QK-norm, rotary embeddings with separate bases for local and global layers,
  grouped-query attention, interleaved sliding-window and global layers, tied embeddings
  scaled by sqrt(embed_dim), optional logit soft-capping.

  The Llama family (Llama 2 and 3, SmolLM2, Qwen 2.5, Mistral without its window) is the same
  decoder with other switches (`llama` below): plain `scale` RMSNorms before attention and MLP
  only, SwiGLU, no QK-norm, every layer global, unscaled embeddings, tied or separate output
  embeddings, optional q/k/v biases (Qwen 2.5) and Llama 3's frequency-dependent RoPE scaling.
  """

  vocab_size: int
  embed_dim: int
  hidden_dim: int  # MLP width (each of the gate and up projections)
  num_layers: int
  num_heads: int
  num_kv_heads: int  # 1 is multi-query attention
  head_dim: int
  # One entry per layer in a repeating cycle; Gemma 3 uses five local layers then one global.
  attention_pattern: tuple[AttentionType, ...] = (AttentionType.LOCAL,) * 5 + (AttentionType.GLOBAL,)
  sliding_window: int = 512  # a local query sees itself and the window - 1 keys before it
  rope_base_local: float = 10_000.0
  rope_base_global: float = 1_000_000.0
  rope_scale_global: float = 1.0  # linear position scaling on global layers (8 for Gemma 3 4B+)
  query_pre_attn_scalar: float | None = None  # queries scaled by its -1/2 power; head_dim if None
  attn_logits_soft_cap: float | None = None  # Gemma 2 uses 50; Gemma 3 none
  final_logit_soft_cap: float | None = None
  norm_eps: float = 1e-6
  use_qk_norm: bool = True
  use_post_attn_norm: bool = True
  use_post_ffw_norm: bool = True
  max_len: int = 32_768  # longest sequence the presets were trained for (informational)
  norm_plus_one: bool = True  # RMSNorm weights are (1 + scale), scale initialized to 0 (Gemma); else scale, init 1
  activation: str = "gelu_tanh"  # the gated MLP's: gelu_tanh (GeGLU, Gemma) or silu (SwiGLU, Llama)
  scale_embeddings: bool = True  # token embeddings times sqrt(embed_dim) (Gemma)
  tie_embeddings: bool = True  # the output projection is the embedding table; else a table of its own
  qkv_bias: bool = False  # biases on the query, key and value projections (Qwen 2.5)
  # Llama 3's RoPE scaling: (factor, low_freq_factor, high_freq_factor, original_max_position) or None
  rope_llama3: tuple[float, float, float, float] | None = None
  # Divisors of the global layers' RoPE frequencies, one per frequency (head_dim / 2): how a GGUF
  # file stores Llama 3.1's scaling (its rope_freqs tensor); None: none
  rope_freq_factors: tuple[float, ...] | None = None
  param_dtype: jnp.dtype = jnp.float32
  dtype: jnp.dtype = jnp.float32  # compute dtype; bfloat16 on accelerators

  def __post_init__(self):
    for field in ("dtype", "param_dtype"):  # gin and the CLI give dtypes as strings
      object.__setattr__(self, field, jnp.dtype(getattr(self, field)))
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"TransformerConfig.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
      )
    if self.head_dim % 2:
      raise ValueError(f"TransformerConfig.head_dim={self.head_dim} must be even for rotary embeddings")
    if not self.attention_pattern:
      raise ValueError("TransformerConfig.attention_pattern must name at least one layer type")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"TransformerConfig.activation={self.activation!r}; one of {ACTIVATIONS}")
    for field in ("rope_llama3", "rope_freq_factors"):
      if getattr(self, field) is not None:
        object.__setattr__(self, field, tuple(float(x) for x in getattr(self, field)))
    if self.rope_freq_factors is not None and len(self.rope_freq_factors) != self.head_dim // 2:
      raise ValueError(
        f"TransformerConfig.rope_freq_factors has {len(self.rope_freq_factors)} factors; head_dim={self.head_dim} "
        f"needs {self.head_dim // 2}"
      )

  @property
  def attention_types(self) -> tuple[AttentionType, ...]:
    """The attention type of each layer, the pattern repeated to num_layers."""
    p = self.attention_pattern
    return tuple(p[i % len(p)] for i in range(self.num_layers))

  @property
  def query_scale(self) -> float:
    scalar = self.query_pre_attn_scalar or self.head_dim
    return float(scalar) ** -0.5

  def replace(self, **kwargs) -> TransformerConfig:
    return dataclasses.replace(self, **kwargs)


def tiny(**overrides) -> TransformerConfig:
  """A few-hundred-kilobyte model for tests and CPU runs (byte vocabulary, 264 ids)."""
  base = dict(
    vocab_size=264,  # seqio.ByteVocabulary needs 259; 264 divides by 8 for vocab sharding
    embed_dim=64,
    hidden_dim=128,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    attention_pattern=(AttentionType.LOCAL, AttentionType.GLOBAL),
    sliding_window=16,  # short, so tests cross it
    max_len=1024,
  )
  base.update(overrides)
  return TransformerConfig(**base)


# What the Llama family's decoders share, against the Gemma 3 defaults.
LLAMA = dict(
  attention_pattern=(AttentionType.GLOBAL,),
  use_qk_norm=False,
  use_post_attn_norm=False,
  use_post_ffw_norm=False,
  norm_plus_one=False,
  activation="silu",
  scale_embeddings=False,
  norm_eps=1e-5,
  rope_base_global=10_000.0,
)


def llama(**fields) -> TransformerConfig:
  """A Llama-family config: LLAMA's switches and the given shapes (and any other field)."""
  return TransformerConfig(**{**LLAMA, **fields})


def tiny_llama(**overrides) -> TransformerConfig:
  """tiny()'s shapes as a Llama-family decoder (SwiGLU, plain RMSNorm, untied output, q/k/v
  biases, Llama 3 RoPE scaling): every Llama switch exercised, for tests and CPU runs."""
  base = dict(vocab_size=264, embed_dim=64, hidden_dim=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=16)
  base |= dict(tie_embeddings=False, qkv_bias=True, rope_llama3=(8.0, 1.0, 4.0, 256.0), max_len=1024)
  return llama(**{**base, **overrides})


# What Gemma 3 sizes share: vocabulary, MQA with 256-wide heads, 512-token windows, 5:1 pattern.
_GEMMA3_COMMON = dict(
  vocab_size=262_144, num_heads=4, num_kv_heads=1, head_dim=256, sliding_window=512, query_pre_attn_scalar=256
)


def gemma3_270m(**overrides) -> TransformerConfig:
  """The shapes of Google's Gemma 3 270M (about 268M parameters, 170M of them embeddings)."""
  return TransformerConfig(**{**_GEMMA3_COMMON, "embed_dim": 640, "hidden_dim": 2048, "num_layers": 18, **overrides})


def gemma3_1b(**overrides) -> TransformerConfig:
  """The shapes of Google's Gemma 3 1B (about 1.0B parameters)."""
  return TransformerConfig(**{**_GEMMA3_COMMON, "embed_dim": 1152, "hidden_dim": 6912, "num_layers": 26, **overrides})


def gemma3_4b(**overrides) -> TransformerConfig:
  """The shapes of Google's Gemma 3 4B (about 3.9B parameters; its text decoder): a wider window
  and 8 query heads over 4 key/value heads, global positions scaled by 8."""
  shapes = dict(vocab_size=262_208, embed_dim=2560, hidden_dim=10_240, num_layers=34, num_heads=8, num_kv_heads=4)
  return TransformerConfig(
    **{**_GEMMA3_COMMON, **shapes, "sliding_window": 1024, "rope_scale_global": 8.0, **overrides}
  )


def smollm2_135m(**overrides) -> TransformerConfig:
  """The shapes of Hugging Face's SmolLM2 135M (Llama architecture, tied embeddings)."""
  base = dict(vocab_size=49_152, embed_dim=576, hidden_dim=1536, num_layers=30, num_heads=9, num_kv_heads=3)
  return llama(**{**base, "head_dim": 64, "rope_base_global": 100_000.0, "max_len": 8192, **overrides})


PRESETS = {
  "tiny": tiny,
  "tiny_llama": tiny_llama,
  "gemma3_270m": gemma3_270m,
  "gemma3_1b": gemma3_1b,
  "gemma3_4b": gemma3_4b,
  "smollm2_135m": smollm2_135m,
}


def preset(name: str, **overrides) -> TransformerConfig:
  """Looks a preset up by name; unknown names list the known ones."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
  return PRESETS[name](**overrides)
