"""The decoder-only transformer: hidden states, token logits and a scalar head."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlaif_jax import losses
from rlaif_jax.models.config import AttentionType, TransformerConfig
from rlaif_jax.models.layers import Block, Embedder, attention_mask, known_empty, norm, ring_slots
from rlaif_jax.models.lora import LoraConfig

Array = jax.Array
LOGIT_SLICE_ROWS = 32768  # vocabulary rows per slice in token_stats: Gemma's 262,144 in 8 slices
# {"index": tokens written ([] int32; an int before the cache passes through jit),
#  "valid": [B, S] bool (False on padding), "layers": [{"k", "v"}] * L}
Cache = dict[str, Any]


def layer_slots(config: TransformerConfig, max_len: int, local_ring: bool = True) -> list[int]:
  """Cache slots of each layer for sequences of max_len: max_len in a global layer; in a local one
  a ring of min(sliding_window, max_len), as the window is all it reads (local_ring=False: max_len,
  the same results from a ring that never wraps; for comparisons)."""
  ring = min(config.sliding_window, max_len) if local_ring else max_len
  return [ring if kind == AttentionType.LOCAL else max_len for kind in config.attention_types]


def init_cache(config: TransformerConfig, batch_size: int, max_len: int, dtype=None, local_ring: bool = True) -> Cache:
  """An empty KV cache for sequences of max_len tokens: max_len slots in global layers, the
  sliding window's in local ones (layer_slots). Gemma 3 at 64 x 1280 tokens (window 512, five
  local layers in six) keeps half the keys and values of one max_len slots per layer."""
  dtype = dtype or config.dtype
  shape = lambda slots: (batch_size, slots, config.num_kv_heads, config.head_dim)  # noqa: E731
  return {
    "index": 0,  # a Python int, so a prefill traced in the same jit knows it is empty (layers.known_empty)
    "valid": jnp.zeros((batch_size, max_len), jnp.bool_),
    "layers": [
      {"k": jnp.zeros(shape(s), dtype), "v": jnp.zeros(shape(s), dtype)}
      for s in layer_slots(config, max_len, local_ring)
    ],
  }


def extend_cache(config: TransformerConfig, cache: Cache, extra: int) -> Cache:
  """The cache with room for `extra` more tokens: global layers and `valid` grow by extra slots; a
  local ring shorter than the window (so never wrapped) grows up to the window."""
  pad = lambda x, n: jnp.pad(x, [(0, 0), (0, n)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
  length = cache["valid"].shape[1] + extra
  layers = []
  for kind, layer in zip(config.attention_types, cache["layers"]):
    slots = layer["k"].shape[1]
    grow = extra if kind == AttentionType.GLOBAL else max(0, min(config.sliding_window, length) - slots)
    layers.append({name: pad(x, grow) for name, x in layer.items()})
  return {"index": cache["index"], "valid": pad(cache["valid"], extra), "layers": layers}


def positions_from_mask(input_mask: Array) -> Array:
  """Positions counted over real tokens only, so left padding does not shift them. [B, T]."""
  return jnp.maximum(jnp.cumsum(input_mask.astype(jnp.int32), axis=-1) - 1, 0)


def segment_positions(segment_ids: Array) -> Array:
  """Positions counted from 0 at the start of each segment (a change of id). [B, T]."""
  t = segment_ids.shape[1]
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], jnp.bool_), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
  first = jax.lax.cummax(jnp.where(starts, jnp.arange(t), 0), axis=1)
  return (jnp.arange(t) - first).astype(jnp.int32)


class Transformer(nn.Module):
  """A decoder of the Gemma 3 or the Llama family (models.TransformerConfig).

  `__call__` gives token logits (and scalar scores when `scalar_head`); the pieces are
  separate methods so that callers compute only what they need:
  `hidden_states` -> `logits` / `token_logits` / `scores`.
  """

  config: TransformerConfig
  scalar_head: bool = False  # a per-position scalar output, for reward and value models
  lora: LoraConfig | None = None  # low-rank adapters on the blocks' projections (models.lora)

  def setup(self):
    cfg = self.config
    self.embedder = Embedder(cfg)
    self.blocks = [Block(cfg, t, self.lora) for t in cfg.attention_types]
    self.final_norm = norm(cfg)
    if self.scalar_head:
      init = nn.with_logical_partitioning(nn.initializers.zeros, ("embed",))
      self.score_kernel = self.param("score_kernel", init, (cfg.embed_dim,), cfg.param_dtype)
      self.score_bias = self.param("score_bias", nn.initializers.zeros, (), cfg.param_dtype)

  def hidden_states(
    self,
    tokens: Array,
    input_mask: Array | None = None,
    positions: Array | None = None,
    cache: Cache | None = None,
    segment_ids: Array | None = None,
  ) -> tuple[Array, Cache | None]:
    """Final-normed hidden states [B, T, D] and the updated cache (None without one).

    tokens: [B, T] ids; input_mask: [B, T], False on padding (default: all real);
    positions: [B, T] (default: counted over real tokens, or within each segment; required with
    a cache). With a cache, the T tokens are written at index, index + 1, ... (Cache).
    segment_ids: [B, T] for rows that pack several sequences (data.pack_sft_features): a token
    attends only within its segment. Not with a cache.
    """
    cfg = self.config
    if input_mask is None:
      input_mask = jnp.ones(tokens.shape, jnp.bool_)
    input_mask = input_mask.astype(jnp.bool_)
    t = tokens.shape[1]
    if segment_ids is not None and cache is not None:
      raise ValueError("Transformer.hidden_states: segment_ids (packed rows) are for training, not with a cache")
    if cache is not None and positions is None:
      raise ValueError("Transformer.hidden_states: positions are required when decoding with a cache")
    if positions is None:
      positions = positions_from_mask(input_mask) if segment_ids is None else segment_positions(segment_ids)
    index = None if cache is None else cache["index"]
    if cache is not None:
      valid = jax.lax.dynamic_update_slice(cache["valid"], input_mask, (0, index))
    if cache is None or known_empty(index):  # keys: the new tokens only
      query_idx = key_idx = local_idx = jnp.arange(t)
      key_valid = local_valid = input_mask
    else:
      query_idx = index + jnp.arange(t)
      key_idx, key_valid = jnp.arange(valid.shape[1]), valid
      local_idx, local_valid = self._local_keys(cache, query_idx, input_mask)
    masks = {
      AttentionType.GLOBAL: attention_mask(query_idx, key_idx, key_valid, None, segment_ids),
      AttentionType.LOCAL: attention_mask(query_idx, local_idx, local_valid, cfg.sliding_window, segment_ids),
    }

    x = nn.with_logical_constraint(self.embedder.encode(tokens), ("batch", "length", "embed"))
    new_layers = []
    for i, (block, kind) in enumerate(zip(self.blocks, cfg.attention_types)):
      layer_cache = None if cache is None else cache["layers"][i]
      x, layer_cache = block(x, positions, masks[kind], layer_cache, index)
      new_layers.append(layer_cache)
    x = self.final_norm(x)
    return x, None if cache is None else {"index": index + t, "valid": valid, "layers": new_layers}

  def _local_keys(self, cache: Cache, query_idx: Array, input_mask: Array) -> tuple[Array, Array]:
    """What local layers attend to with a cache: their ring's slots (each the token it holds) then
    the new tokens. -> (token index [W + T], valid [B, W + T])."""
    kinds = self.config.attention_types
    if AttentionType.LOCAL not in kinds:
      return query_idx, input_mask  # unused
    ring = ring_slots(cache["index"], cache["layers"][kinds.index(AttentionType.LOCAL)]["k"].shape[1])
    held = jnp.take(cache["valid"], jnp.maximum(ring, 0), axis=1) & (ring >= 0)[None]
    return jnp.concatenate([ring, query_idx]), jnp.concatenate([held, input_mask], 1)

  def logits(self, hidden: Array) -> Array:
    """[B, T, D] -> [B, T, V] float32 logits, soft-capped when the config says so."""
    logits = self.embedder.decode(hidden)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return self._soft_cap(logits)

  def token_stats(self, hidden: Array, targets: Array) -> tuple[Array, Array, Array]:
    """(log p(target), argmax, entropy) at every position: hidden [B, T, D], targets [B, T] ->
    [B, T] each, from vocabulary slices of LOGIT_SLICE_ROWS rows (losses.streamed_token_stats):
    the [B, T, V] logits never exist at once, in the forward or the backward pass."""
    slices = max(1, self.config.vocab_size // LOGIT_SLICE_ROWS)
    table = nn.with_logical_constraint(self.embedder.output_table, ("vocab", None))
    return losses.streamed_token_stats(hidden, table, targets, slices, self.config.final_logit_soft_cap)

  def token_logits(self, hidden: Array, token_ids: Array) -> Array:
    """Logits of a few candidate tokens only: hidden [B, D], token_ids [C] -> [B, C]."""
    return self._soft_cap(self.embedder.decode_tokens(hidden, token_ids))

  def scores(self, hidden: Array) -> Array:
    """The scalar head at every position: [B, T, D] -> [B, T] float32."""
    if not self.scalar_head:
      raise ValueError("Transformer.scores needs a model built with scalar_head=True")
    w = self.score_kernel.astype(jnp.float32)
    return jnp.einsum("BTD,D->BT", hidden.astype(jnp.float32), w) + self.score_bias.astype(jnp.float32)

  def _soft_cap(self, logits: Array) -> Array:
    cap = self.config.final_logit_soft_cap
    return logits if cap is None else jnp.tanh(logits / cap) * cap

  def __call__(self, tokens: Array, input_mask: Array | None = None, positions: Array | None = None):
    """Token logits [B, T, V]; with a scalar head, (logits, scores [B, T])."""
    hidden, _ = self.hidden_states(tokens, input_mask, positions)
    logits = self.logits(hidden)
    return (logits, self.scores(hidden)) if self.scalar_head else logits


def init_params(model: Transformer, rng: Array, boxed: bool = False):
  """Randomly initialized parameters; `boxed` keeps the logical-axis metadata."""
  dummy = jnp.zeros((1, 1), jnp.int32)
  params = model.init(rng, dummy)["params"]
  return params if boxed else nn.meta.unbox(params)


def count_params(tree) -> int:
  """Number of scalars in a (possibly abstract) parameter tree."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))
