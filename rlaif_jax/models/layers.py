"""Building blocks of the decoder: norms, rotary embeddings, attention, MLP, embedder.

Shapes use single letters: B batch, T query length, S key length, D embed, N query heads,
K key/value heads, G query heads per key/value head, H head dim, F MLP width, V vocab.
Every parameter carries logical axis names; the mesh mapping lives in partitioning.py.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax.models.config import AttentionType, TransformerConfig
from rlaif_jax.models.lora import LoraConfig, adapted

Array = jax.Array
# {"k": [B, S, K, H], "v": [B, S, K, H]}: slot i holds token i in a global layer; in a local layer
# (a ring of W slots) slot i holds the latest token j with j % W == i (write_ring).
LayerCache = dict[str, Array]

_NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite, so fully masked rows stay NaN-free


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def fan_in_init(in_axis, out_axis):
  """LeCun normal over the named input axes: unit-variance outputs for unit-variance inputs."""
  return nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=in_axis, out_axis=out_axis)


class RMSNorm(nn.Module):
  """RMSNorm in float32: x / rms(x) * (1 + scale), scale initialized to zero (Gemma's), or with
  plus_one=False x / rms(x) * scale, scale initialized to one (Llama's)."""

  axis_name: str = "embed"
  eps: float = 1e-6
  param_dtype: jnp.dtype = jnp.float32
  plus_one: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = _param(self, "scale", init, (x.shape[-1],), (self.axis_name,), self.param_dtype).astype(jnp.float32)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + scale if self.plus_one else scale)).astype(x.dtype)


def norm(cfg: TransformerConfig, name: str | None = None, axis_name: str = "embed") -> RMSNorm:
  """The config's RMSNorm over axis_name."""
  return RMSNorm(axis_name, cfg.norm_eps, cfg.param_dtype, cfg.norm_plus_one, name=name)


def rope_inv_freq(head_dim: int, base: float, llama3: tuple | None = None, factors: tuple | None = None) -> Array:
  """Rotary inverse frequencies [H/2]: base^(-2i/H); with Llama 3's scaling (factor, low and high
  frequency factors, original context length), wavelengths longer than original / low are divided
  by factor, those shorter than original / high kept, and the band between interpolated; with
  factors ([H/2], a GGUF file's rope_freqs: the same scaling as llama.cpp stores it), each
  frequency divided by its factor."""
  inv_freq = base ** (-2.0 * jnp.arange(head_dim // 2, dtype=jnp.float32) / head_dim)
  if factors is not None:
    inv_freq = inv_freq / jnp.asarray(factors, jnp.float32)
  if llama3 is None:
    return inv_freq
  factor, low, high, original = llama3
  wavelength = 2 * jnp.pi / inv_freq
  smooth = (original / wavelength - low) / (high - low)
  between = (1 - smooth) * inv_freq / factor + smooth * inv_freq
  scaled = jnp.where(wavelength > original / low, inv_freq / factor, inv_freq)
  is_between = (wavelength <= original / low) & (wavelength >= original / high)
  return jnp.where(is_between, between, scaled)


def apply_rope(
  x: Array, positions: Array, base: float, scale: float = 1.0, llama3: tuple | None = None, factors: tuple | None = None
) -> Array:
  """Rotary embedding on the two halves of the head dim (the Gemma/HF layout).

  x: [B, T, N, H]; positions: [B, T] integer positions; returns x rotated, in x's dtype.
  scale divides the positions (linear scaling); llama3 and factors rescale the frequencies (rope_inv_freq).
  """
  inv_freq = rope_inv_freq(x.shape[-1], base, llama3, factors)  # [H/2]
  angles = positions.astype(jnp.float32)[..., None] / scale * inv_freq  # [B, T, H/2]
  sin = jnp.sin(angles)[:, :, None, :]  # [B, T, 1, H/2]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def attention_mask(
  query_idx: Array, key_idx: Array, key_valid: Array, window: int | None, segment_ids: Array | None = None
) -> Array:
  """Causal (and optionally sliding-window) mask over cache slots.

  query_idx: [T] and key_idx: [S] slot indices; key_valid: [B, S] bool (False on padding).
  A query sees valid keys at or before it, and with a window only the window - 1 keys before
  it as well; with segment_ids ([B, T], T == S: several sequences packed in a row) only the
  keys of its own segment. Returns [B, T, S] bool.
  """
  q = query_idx[:, None]  # [T, 1]
  k = key_idx[None, :]  # [1, S]
  allowed = k <= q
  if window is not None:
    allowed = allowed & (k > q - window)
  allowed = allowed[None, :, :] & key_valid[:, None, :]
  if segment_ids is not None:
    allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
  return allowed


def known_empty(cache_index) -> bool:
  """Whether a cache is known, while tracing, to hold no token yet: models.init_cache's index is
  the Python int 0 until the cache passes through a jit boundary. Writing into such a cache (a
  prefill) reads only the new tokens' keys, not the cache's max_len empty slots."""
  return isinstance(cache_index, int) and cache_index == 0


def ring_slots(index: Array, slots: int) -> Array:
  """The token each slot of a ring of `slots` holds before tokens are written at `index`: the
  latest j < index with j % slots == slot, negative where none was written yet. [slots]."""
  return index - 1 - jnp.mod(index - 1 - jnp.arange(slots), slots)


def write_ring(ring: Array, new: Array, index: Array) -> Array:
  """Writes new [B, T, ...] (tokens index, ..., index + T - 1) into ring [B, W, ...], token j at
  slot j % W; of more than W tokens only the last W stay."""
  w, t = ring.shape[1], new.shape[1]
  keep = min(t, w)
  new, start = new[:, t - keep :].astype(ring.dtype), index + t - keep
  if keep == 1:  # a decode step's one token: a slice update, cheaper than a scatter
    return jax.lax.dynamic_update_slice(ring, new, (0, jnp.mod(start, w)) + (0,) * (ring.ndim - 2))
  return ring.at[:, jnp.mod(start + jnp.arange(keep), w)].set(new, unique_indices=True)


class Embedder(nn.Module):
  """Token embedding (scaled by sqrt(D) when the config says so) and the output projection: the
  same table when tied, else a table of its own, `unembedding` [V, D]."""

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    shape, axes = (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed")
    self.embedding = _param(self, "embedding", fan_in_init(1, 0), shape, axes, cfg.param_dtype)
    if not cfg.tie_embeddings:
      self.unembedding = _param(self, "unembedding", fan_in_init(1, 0), shape, axes, cfg.param_dtype)

  @property
  def output_table(self) -> Array:
    """The [V, D] table the logits are read from."""
    return self.embedding if self.config.tie_embeddings else self.unembedding

  def encode(self, tokens: Array) -> Array:
    """tokens: [B, T] -> [B, T, D] in the compute dtype."""
    cfg = self.config
    # The table stays split over the vocabulary (each shard looks up its rows, then a sum over the
    # shards): left to itself, XLA would move the rows from the embed split to the batch split by
    # replicating them ("involuntary full rematerialization").
    table = nn.with_logical_constraint(self.embedding, ("vocab", None))
    x = jnp.take(table, tokens, axis=0).astype(cfg.dtype)  # [B, T, D]
    if not cfg.scale_embeddings:
      return x
    # The scale is rounded to the compute dtype first, as Gemma does.
    return x * jnp.asarray(cfg.embed_dim**0.5, dtype=cfg.dtype)

  def decode(self, x: Array) -> Array:
    """x: [B, T, D] -> logits [B, T, V] in float32."""
    return jnp.einsum("BTD,VD->BTV", x, self.output_table.astype(x.dtype), preferred_element_type=jnp.float32)

  def decode_tokens(self, x: Array, token_ids: Array) -> Array:
    """Logits of a few tokens only. x: [B, D]; token_ids: [C] -> [B, C] in float32."""
    rows = jnp.take(self.output_table, token_ids, axis=0).astype(x.dtype)  # [C, D]
    return jnp.einsum("BD,CD->BC", x, rows, preferred_element_type=jnp.float32)


class Attention(nn.Module):
  """Grouped-query attention with QK-norm, rotary embeddings and an optional KV cache."""

  config: TransformerConfig
  attention_type: AttentionType
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(
    self,
    x: Array,
    positions: Array,
    mask: Array,
    cache: LayerCache | None = None,
    cache_index: Array | None = None,
  ) -> tuple[Array, LayerCache | None]:
    """x: [B, T, D]; positions: [B, T]; cache k/v: [B, S, K, H] (a ring of S slots in a local layer);
    mask: [B, T, T] over the new tokens without a cache or with a known_empty one; [B, T, S] over
    a global layer's cache after writing them; [B, T, S + T] over a local layer's ring before
    writing them, then the new tokens."""
    cfg = self.config
    d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    w_q = _param(self, "q", fan_in_init(0, (1, 2)), (d, n, h), ("embed", "heads", "kv"), cfg.param_dtype)
    w_k = _param(self, "k", fan_in_init(0, (1, 2)), (d, k, h), ("embed", "kv_heads", "kv"), cfg.param_dtype)
    w_v = _param(self, "v", fan_in_init(0, (1, 2)), (d, k, h), ("embed", "kv_heads", "kv"), cfg.param_dtype)
    w_o = _param(self, "o", fan_in_init((0, 1), 2), (n, h, d), ("heads", "kv", "embed"), cfg.param_dtype)

    query = adapted(self, "q", self.lora, x, w_q, ("embed", "heads", "kv"), 1)  # [B, T, N, H]
    key = adapted(self, "k", self.lora, x, w_k, ("embed", "kv_heads", "kv"), 1)  # [B, T, K, H]
    value = adapted(self, "v", self.lora, x, w_v, ("embed", "kv_heads", "kv"), 1)  # [B, T, K, H]
    if cfg.qkv_bias:
      zeros = nn.initializers.zeros
      query = query + _param(self, "q_bias", zeros, (n, h), ("heads", "kv"), cfg.param_dtype).astype(cfg.dtype)
      key = key + _param(self, "k_bias", zeros, (k, h), ("kv_heads", "kv"), cfg.param_dtype).astype(cfg.dtype)
      value = value + _param(self, "v_bias", zeros, (k, h), ("kv_heads", "kv"), cfg.param_dtype).astype(cfg.dtype)
    query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))

    if cfg.use_qk_norm:
      query = norm(cfg, "query_norm", "kv")(query)
      key = norm(cfg, "key_norm", "kv")(key)

    if self.attention_type == AttentionType.LOCAL:
      rope = (cfg.rope_base_local, 1.0, None, None)
    else:
      rope = (cfg.rope_base_global, cfg.rope_scale_global, cfg.rope_llama3, cfg.rope_freq_factors)
    query = apply_rope(query, positions, *rope) * jnp.asarray(cfg.query_scale, cfg.dtype)
    key = apply_rope(key, positions, *rope)

    if cache is not None:  # attention reads the new keys at the precision the cache keeps them
      key, value = key.astype(cache["k"].dtype), value.astype(cache["v"].dtype)
    pieces, new_cache = [(key, value)], None  # no cache, or an empty one: the new tokens see each other only
    if cache is not None and self.attention_type == AttentionType.LOCAL:
      # The ring holds the window before these tokens; they are written after it is read, since a
      # chunk of several tokens may overwrite slots its own first queries still see.
      new_cache = {"k": write_ring(cache["k"], key, cache_index), "v": write_ring(cache["v"], value, cache_index)}
      if not known_empty(cache_index):
        pieces = [(cache["k"], cache["v"]), (key, value)]
    elif cache is not None:
      start = (0, cache_index, 0, 0)
      new_cache = {
        "k": jax.lax.dynamic_update_slice(cache["k"], key, start),  # [B, S, K, H]
        "v": jax.lax.dynamic_update_slice(cache["v"], value, start),
      }
      if not known_empty(cache_index):
        pieces = [(new_cache["k"], new_cache["v"])]

    b, t = query.shape[:2]
    grouped = query.reshape(b, t, k, n // k, h)  # [B, T, K, G, H]
    # One softmax over the keys of every piece (mask: [B, T, sum of their S]), without joining
    # the pieces' keys and values into one copy.
    logits = jnp.concatenate(
      [jnp.einsum("BTKGH,BSKH->BKGTS", grouped, ks, preferred_element_type=jnp.float32) for ks, _ in pieces], -1
    )
    if cfg.attn_logits_soft_cap is not None:
      logits = jnp.tanh(logits / cfg.attn_logits_soft_cap) * cfg.attn_logits_soft_cap
    logits = jnp.where(mask[:, None, None, :, :], logits, _NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(cfg.dtype)  # softmax in float32 for stability
    ends = np.cumsum([vs.shape[1] for _, vs in pieces])
    attended = sum(
      jnp.einsum("BKGTS,BSKH->BTKGH", probs[..., end - vs.shape[1] : end], vs.astype(cfg.dtype))
      for end, (_, vs) in zip(ends, pieces)
    ).reshape(b, t, n, h)
    out = adapted(self, "o", self.lora, attended, w_o, ("heads", "kv", "embed"), 2)  # [B, T, D]
    return out, new_cache


ACTIVATIONS = {"gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True), "silu": jax.nn.silu}


class FeedForward(nn.Module):
  """A gated MLP: down(act(gate(x)) * up(x)); GeGLU (gelu_tanh, Gemma) or SwiGLU (silu, Llama)."""

  config: TransformerConfig
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    d, f = cfg.embed_dim, cfg.hidden_dim
    w_gate = _param(self, "gate", fan_in_init(0, 1), (d, f), ("embed", "mlp"), cfg.param_dtype)
    w_up = _param(self, "up", fan_in_init(0, 1), (d, f), ("embed", "mlp"), cfg.param_dtype)
    w_down = _param(self, "down", fan_in_init(0, 1), (f, d), ("mlp", "embed"), cfg.param_dtype)
    gate = adapted(self, "gate", self.lora, x, w_gate, ("embed", "mlp"), 1)  # [B, T, F]
    up = adapted(self, "up", self.lora, x, w_up, ("embed", "mlp"), 1)
    hidden = nn.with_logical_constraint(ACTIVATIONS[cfg.activation](gate) * up, ("batch", "length", "mlp"))
    return adapted(self, "down", self.lora, hidden, w_down, ("mlp", "embed"), 1)  # [B, T, D]


class Block(nn.Module):
  """One decoder layer: norm -> attention -> norm -> residual; norm -> MLP -> norm -> residual."""

  config: TransformerConfig
  attention_type: AttentionType
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x, positions, mask, cache=None, cache_index=None):
    cfg = self.config
    h, new_cache = Attention(cfg, self.attention_type, self.lora, name="attn")(
      norm(cfg, "pre_attn_norm")(x), positions, mask, cache, cache_index
    )
    if cfg.use_post_attn_norm:
      h = norm(cfg, "post_attn_norm")(h)
    x = x + h
    h = FeedForward(cfg, self.lora, name="mlp")(norm(cfg, "pre_ffw_norm")(x))
    if cfg.use_post_ffw_norm:
      h = norm(cfg, "post_ffw_norm")(h)
    x = nn.with_logical_constraint(x + h, ("batch", "length", "embed"))
    return x, new_cache
