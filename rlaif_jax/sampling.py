"""Batched autoregressive sampling with a KV cache.

Prompts are left-padded to one length P so that every sequence writes its next token to the
same cache slot; positions are counted over real tokens, so padding does not shift them.
One jitted prefill fills the cache with the prompts; one jitted `lax.while_loop` decodes
up to max_new_tokens, stopping early once every sequence has emitted EOS (checked every
`eos_check_every` steps).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax.checks import check_arguments
from rlaif_jax.compilation import CountedJit
from rlaif_jax.models import Transformer, init_cache, positions_from_mask

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How every role samples (SFT's samples, candidate pairs, RL rollouts, evaluation): the user's
  settings only. What ends and pads a row is the vocabulary's (TokenIds), never a setting."""

  max_new_tokens: int = 64
  temperature: float = 1.0  # 0 is greedy
  top_k: int = 0  # 0 keeps every token
  top_p: float = 1.0  # nucleus mass; 1 keeps every token
  # Decode steps between checks that every row has ended: the loop runs this many steps per
  # iteration (rows that ended emit pad; outputs do not depend on it). On a GPU each check costs
  # the host a wait (Gemma 3 1B, 64 rows, H200: 3.47 ms per step checking every step, 2.37 every
  # 4, 2.12 every 8, compiling in 19, 30 and 63 s); on CPU nothing. None: 4 on accelerators, 1 on CPU.
  eos_check_every: int | None = None

  def __post_init__(self):
    check_arguments("SamplingConfig", dataclasses.asdict(self))

  def decides(self) -> dict:
    """The fields that decide what is sampled (what records' made_with holds): all but
    eos_check_every, so changing it never invalidates saved generations."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k != "eos_check_every"}


class TokenIds(NamedTuple):
  """The vocabulary's facts sampling needs: the id that ends a row and the id written after it."""

  eos_id: int = 1
  pad_id: int = 0

  @classmethod
  def of(cls, vocab) -> TokenIds:
    return cls(int(vocab.eos_id), int(vocab.pad_id))


def decode_steps_per_check(config: SamplingConfig) -> int:
  """config.eos_check_every, or where it is None, 1 on CPU and 4 on accelerators."""
  if config.eos_check_every is not None:
    return config.eos_check_every
  return 1 if jax.default_backend() == "cpu" else 4


class SampleOutput(NamedTuple):
  tokens: Array  # [B, N] sampled ids, pad_id after EOS
  logprobs: Array | None  # [B, N] log p(token) under the model at temperature 1, before top-k/top-p; None unless asked
  mask: Array  # [B, N] True up to and including EOS


def filter_logits(logits: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
  """Sets logits outside the top-k and outside the top-p nucleus to -inf. logits: [B, V]."""
  logits = logits.astype(jnp.float32)
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_probs = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), order, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = mass_before < top_p  # the smallest prefix reaching top_p; top-1 always kept
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, -jnp.inf)
  return logits


def draw(logits: Array, rng: Array) -> Array:
  """One token per row from softmax(logits) by the inverse of its CDF: a uniform u per row,
  the first token whose running probability exceeds u. [B, V] -> [B] int32.

  The same distribution as jax.random.categorical's Gumbel-max draw, with one random number per
  row instead of one per vocabulary entry: at Gemma's 262k vocabulary that draw took 33 of a
  decode step's 83 ms on a 2-core CPU (8 rows, 270M), this one 5. Tokens of probability 0
  (filtered to -inf) are never drawn.
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  cdf = jnp.cumsum(probs, axis=-1)  # non-decreasing, also in floating point
  u = jax.random.uniform(rng, (logits.shape[0], 1), jnp.float32) * cdf[:, -1:]
  token = jnp.sum(cdf <= u, axis=-1)  # cdf[token - 1] <= u < cdf[token]: a token of probability 0 never
  last = logits.shape[-1] - 1 - jnp.argmax(probs[:, ::-1] > 0, axis=-1)  # u rounded up to the total
  return jnp.minimum(token, last).astype(jnp.int32)


def choose_tokens(logits: Array, rng: Array, config: SamplingConfig) -> Array:
  """Greedy when temperature is 0, else a draw from the filtered, tempered softmax. [B]."""
  if config.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits, config.top_k, config.top_p)
  return draw(filtered / config.temperature, rng)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0, length: int | None = None):
  """Token lists -> (tokens [B, P], mask [B, P]) left-padded to the longest (or `length`)."""
  length = length or max(len(p) for p in prompts)
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for i, p in enumerate(prompts):
    p = list(p)[-length:]
    if p:
      tokens[i, length - len(p) :] = p
      mask[i, length - len(p) :] = True
  return tokens, mask


class Sampler:
  """Samples continuations of left-padded prompts; compiled once per (B, P, config).

  logprobs=True also returns each sampled token's log-probability (a full-vocabulary log_softmax
  per decode step); the trainers score what was sampled themselves, so by default nothing is
  computed that nobody reads. The decode loop takes the prefill's KV cache as a donated buffer
  and updates it in place (donate_cache=False keeps a second copy at peak, for benchmarks), as
  local_ring=False keeps every token in local layers too (models.layer_slots): the same samples
  from a larger cache.
  """

  def __init__(
    self,
    model: Transformer,
    config: SamplingConfig,
    ids: TokenIds = TokenIds(),
    local_ring: bool = True,
    logprobs: bool = False,
    donate_cache: bool = True,
  ):
    self.model = model
    self.config, self.ids = config, ids
    self.local_ring = local_ring
    self.logprobs = logprobs
    self._prefill = CountedJit(self._prefill_fn, static_argnames=("repeats",))
    self._decode = CountedJit(self._decode_fn, donate_argnames=("cache",) if donate_cache else ())

  def _prefill_fn(self, params, tokens, mask, repeats: int = 1):
    """Logits after each prompt, its KV cache and the next position; with repeats, each prompt's
    (computed once) repeated for that many adjacent rows that sample from it."""
    b, p = tokens.shape
    cache = init_cache(self.model.config, b, p + self.config.max_new_tokens, local_ring=self.local_ring)
    positions = positions_from_mask(mask)
    hidden, cache = self.model.apply(
      {"params": params}, tokens, mask, positions, cache, method=Transformer.hidden_states
    )
    logits = self.model.apply({"params": params}, hidden[:, -1:], method=Transformer.logits)[:, 0]
    next_pos = jnp.sum(mask, axis=-1).astype(jnp.int32)  # [B] position of the first new token
    if repeats > 1:
      rows = lambda x: jnp.repeat(x, repeats, axis=0)  # noqa: E731
      logits, next_pos = rows(logits), rows(next_pos)
      cache = {"index": cache["index"], "valid": rows(cache["valid"]), "layers": jax.tree.map(rows, cache["layers"])}
    return logits, cache, next_pos

  def _decode_fn(self, params, logits, cache, next_pos, rng):
    cfg, ids = self.config, self.ids
    b, n = logits.shape[0], cfg.max_new_tokens
    init = dict(
      i=jnp.zeros((), jnp.int32),
      logits=logits,
      cache=cache,
      pos=next_pos,
      done=jnp.zeros((b,), jnp.bool_),
      tokens=jnp.full((b, n), ids.pad_id, jnp.int32),
      mask=jnp.zeros((b, n), jnp.bool_),
    )
    if self.logprobs:
      init["logprobs"] = jnp.zeros((b, n), jnp.float32)

    def cond(s):
      return (s["i"] < n) & ~jnp.all(s["done"])

    def body(s):
      for _ in range(decode_steps_per_check(cfg)):  # unrolled: steps past n write nothing
        s = step(s)
      return s

    def step(s):
      i = s["i"]
      token = choose_tokens(s["logits"], jax.random.fold_in(rng, i), cfg)  # [B]
      live = ~s["done"]
      token = jnp.where(live, token, ids.pad_id)
      hidden, cache = self.model.apply(
        {"params": params},
        token[:, None],
        jnp.ones((b, 1), jnp.bool_),
        s["pos"][:, None],
        s["cache"],
        method=Transformer.hidden_states,
      )
      logits = self.model.apply({"params": params}, hidden, method=Transformer.logits)[:, 0]
      out = dict(
        i=i + 1,
        logits=logits,
        cache=cache,
        pos=s["pos"] + 1,
        done=s["done"] | (token == ids.eos_id),
        tokens=s["tokens"].at[:, i].set(token, mode="drop"),
        mask=s["mask"].at[:, i].set(live, mode="drop"),
      )
      if self.logprobs:
        logp = jnp.take_along_axis(jax.nn.log_softmax(s["logits"].astype(jnp.float32)), token[:, None], -1)[:, 0]
        out["logprobs"] = s["logprobs"].at[:, i].set(jnp.where(live, logp, 0.0), mode="drop")
      return out

    out = jax.lax.while_loop(cond, body, init)
    # The cache is returned (and dropped by __call__) so that the donated input buffer can be the
    # loop's: XLA aliases a donated input only to an output of its shape.
    return SampleOutput(out["tokens"], out.get("logprobs"), out["mask"]), out["cache"]

  @property
  def traces(self) -> dict[str, int]:
    """Compilations of the prefill and the decode loop (1 each when shapes never changed)."""
    return {"prefill": self._prefill.traces, "decode": self._decode.traces}

  def __call__(self, params, tokens: Array, mask: Array, rng: Array, repeats: int = 1) -> SampleOutput:
    """tokens, mask: [B, P] left-padded prompts -> SampleOutput of [B * repeats, max_new_tokens]:
    repeats samples of each prompt in adjacent rows, the prompt's prefill computed once."""
    logits, cache, next_pos = self._prefill(params, tokens, mask, repeats=repeats)
    return self._decode(params, logits, cache, next_pos, rng)[0]


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def sample_without_cache(
  model: Transformer, params, tokens: Array, mask: Array, rng: Array, config: SamplingConfig, ids: TokenIds = TokenIds()
):
  """The same sampling, recomputing the whole sequence at every step (no KV cache).

  A reference for tests and the baseline of the decoding benchmark; same outputs as Sampler.
  """
  b, p = tokens.shape
  n = config.max_new_tokens
  seq = jnp.concatenate([tokens, jnp.full((b, n), ids.pad_id, jnp.int32)], axis=1)
  valid = jnp.concatenate([mask, jnp.zeros((b, n), jnp.bool_)], axis=1)
  done = jnp.zeros((b,), jnp.bool_)
  out_logp = jnp.zeros((b, n), jnp.float32)
  out_mask = jnp.zeros((b, n), jnp.bool_)

  def body(i, carry):
    seq, valid, done, out_logp, out_mask = carry
    logits = model.apply({"params": params}, seq, valid)  # [B, P + N, V]
    last = jax.lax.dynamic_index_in_dim(logits, p + i - 1, axis=1, keepdims=False)
    token = choose_tokens(last, jax.random.fold_in(rng, i), config)
    logp = jnp.take_along_axis(jax.nn.log_softmax(last), token[:, None], -1)[:, 0]
    live = ~done
    token = jnp.where(live, token, ids.pad_id)
    seq = seq.at[:, p + i].set(token)
    valid = valid.at[:, p + i].set(True)
    out_logp = out_logp.at[:, i].set(jnp.where(live, logp, 0.0))
    out_mask = out_mask.at[:, i].set(live)
    return seq, valid, done | (token == ids.eos_id), out_logp, out_mask

  seq, _, _, out_logp, out_mask = jax.lax.fori_loop(0, n, body, (seq, valid, done, out_logp, out_mask))
  return SampleOutput(seq[:, p:], out_logp, out_mask)


_SAMPLERS: dict = {}


def cached_sampler(model: Transformer, config: SamplingConfig, ids: TokenIds = TokenIds()) -> Sampler:
  """One Sampler (so one compilation per shape) per model, config and ids, reused across calls."""
  key = (id(model), config, ids)
  if key not in _SAMPLERS or _SAMPLERS[key][0] is not model:
    _SAMPLERS[key] = (model, Sampler(model, config, ids))
  return _SAMPLERS[key][1]
