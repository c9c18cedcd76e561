import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomize
from scipy import stats

from rlaif_jax import models, sampling


@pytest.fixture(scope="module")
def lm():
  cfg = models.tiny(sliding_window=6)
  model = models.Transformer(cfg)
  return model, randomize(models.init_params(model, jax.random.PRNGKey(0)))


def test_cached_decoding_equals_full_forward(lm):
  """Prefill, then feed the rest token by token through the cache: same logits as one pass."""
  model, params = lm
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 259, size=n).tolist() for n in (5, 11, 8)]
  tokens, mask = sampling.left_pad(prompts)
  cont = rng.integers(3, 259, size=(3, 12))  # past the sliding window of 6
  full_tokens = np.concatenate([tokens, cont], 1)
  full_mask = np.concatenate([mask, np.ones_like(cont, bool)], 1)
  ref = model.apply({"params": params}, full_tokens, full_mask)

  cache = models.init_cache(model.config, 3, full_tokens.shape[1])
  pos = models.positions_from_mask(jnp.asarray(full_mask))
  p = tokens.shape[1]
  hs = model.apply({"params": params}, tokens, mask, pos[:, :p], cache, method=models.Transformer.hidden_states)
  hidden, cache = hs
  got = [model.apply({"params": params}, hidden, method=models.Transformer.logits)]
  for i in range(cont.shape[1]):
    hidden, cache = model.apply(
      {"params": params},
      cont[:, i : i + 1],
      jnp.ones((3, 1), bool),
      pos[:, p + i : p + i + 1],
      cache,
      method=models.Transformer.hidden_states,
    )
    got.append(model.apply({"params": params}, hidden, method=models.Transformer.logits))
  got = jnp.concatenate(got, axis=1)
  np.testing.assert_allclose(np.asarray(got)[full_mask], np.asarray(ref)[full_mask], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("chunks", [(9, 1, 1, 1, 4, 1, 1, 2, 1), (3, 13, 1, 1, 3)])
def test_local_layers_keep_a_ring_of_window_slots_with_the_same_logits(lm, chunks):
  """Left-padded prompts fed in chunks of 1 to 13 tokens (shorter and longer than the 6-slot
  ring, wrapping inside a chunk): every logit equals one pass over the whole sequence and a cache
  that keeps every token in every layer; local layers keep 6 slots, global ones all 21."""
  model, params = lm
  rng = np.random.default_rng(1)
  total = sum(chunks)
  tokens, mask = sampling.left_pad([rng.integers(3, 259, size=n).tolist() for n in (21, 12, 4)])
  mask[1, 15] = False  # a hole in the middle: the ring must carry validity too
  ref = np.asarray(model.apply({"params": params}, tokens, mask))
  pos = models.positions_from_mask(jnp.asarray(mask))
  apply = jax.jit(lambda *a: model.apply({"params": params}, *a, method=models.Transformer.hidden_states))
  got = {}
  for ring, traced in [(True, True), (True, False), (False, True)]:
    # traced: the first chunk meets a cache whose index is traced (read like any other), else the
    # int 0 of a new one (layers.known_empty: a prefill that reads only its own keys)
    cache, start, out = models.init_cache(model.config, 3, total, local_ring=ring), 0, []
    for i, n in enumerate(chunks):
      end = start + n
      step = apply if traced or i else functools.partial(model.apply, {"params": params}, method="hidden_states")
      hidden, cache = step(tokens[:, start:end], mask[:, start:end], pos[:, start:end], cache)
      out.append(model.apply({"params": params}, hidden, method=models.Transformer.logits))
      start = end
    assert [layer["k"].shape[1] for layer in cache["layers"]] == ([6, total] * 2 if ring else [total] * 4)
    got[ring, traced] = np.concatenate(out, 1)
  np.testing.assert_allclose(got[True, True][mask], ref[mask], rtol=1e-4, atol=1e-4)
  for other in [(True, False), (False, True)]:
    np.testing.assert_allclose(got[True, True][mask], got[other][mask], rtol=1e-5, atol=1e-5)


def test_a_ring_holds_the_latest_token_of_each_slot():
  """write_ring and ring_slots against a list that appends every token: after each chunk (1 to 11
  tokens into 4 slots), slot i holds the latest token j with j % 4 == i and ring_slots names it."""
  rng = np.random.default_rng(2)
  ring, index, written = jnp.full((2, 4, 1), -1), 0, []
  for n in rng.integers(1, 12, size=12):
    new = np.stack([np.arange(index, index + n)] * 2)[..., None] * np.array([1, -1])[:, None, None]
    ring = models.layers.write_ring(ring, jnp.asarray(new), jnp.asarray(index))
    index += int(n)
    written += list(range(index - n, index))
    latest = [max([j for j in written if j % 4 == i], default=-1) for i in range(4)]
    np.testing.assert_array_equal(ring[0, :, 0], [t if t >= 0 else -1 for t in latest])
    np.testing.assert_array_equal(ring[1, :, 0], [-t if t >= 0 else -1 for t in latest])
    slots = np.asarray(models.layers.ring_slots(jnp.asarray(index), 4))
    np.testing.assert_array_equal(np.where(slots >= 0, slots, -1), latest)


NO_EOS = sampling.TokenIds(eos_id=-1)  # rows run to max_new_tokens


def test_sampler_matches_recompute_and_handles_eos(lm):
  model, params = lm
  tokens, mask = sampling.left_pad([[5, 6, 7], [9] * 10, [40, 41, 42, 43, 44, 45]])
  for temperature, top_k, top_p in [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 20, 0.9)]:
    config = sampling.SamplingConfig(max_new_tokens=40, temperature=temperature, top_k=top_k, top_p=top_p)
    ids = sampling.TokenIds(eos_id=7, pad_id=0)
    out = sampling.Sampler(model, config, ids, logprobs=True)(params, tokens, mask, jax.random.PRNGKey(4))
    ref = sampling.sample_without_cache(model, params, tokens, mask, jax.random.PRNGKey(4), config, ids)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.mask, ref.mask)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-4)
    toks, m = np.asarray(out.tokens), np.asarray(out.mask)
    for row, keep in zip(toks, m):
      n = keep.sum()
      assert keep[:n].all() and not keep[n:].any()  # mask is a prefix
      assert (row[n:] == ids.pad_id).all()
      eos = np.flatnonzero(row[:n] == 7)
      assert len(eos) in (0, 1) and (len(eos) == 0 or eos[0] == n - 1)  # EOS ends a sequence
  assert (np.asarray(out.logprobs)[~m] == 0).all() and (np.asarray(out.logprobs)[m] < 0).all()


def test_the_sampler_computes_log_probs_only_when_asked_and_decodes_in_the_donated_cache(lm):
  """Without logprobs=True no log_softmax is traced and the samples are the same; the decode loop
  consumes the prefill's cache (donated: its buffers are deleted, updated in place) unless told not
  to."""
  model, params = lm
  tokens, mask = sampling.left_pad([[5, 6, 7], [9] * 10])
  config = sampling.SamplingConfig(max_new_tokens=9, temperature=1.0)
  key = jax.random.PRNGKey(5)
  asked = sampling.Sampler(model, config, NO_EOS, logprobs=True)(params, tokens, mask, key)
  plain = sampling.Sampler(model, config, NO_EOS)
  out = plain(params, tokens, mask, key)
  assert out.logprobs is None and asked.logprobs.shape == (2, 9)
  np.testing.assert_array_equal(out.tokens, asked.tokens)
  np.testing.assert_array_equal(out.mask, asked.mask)
  logits, cache, pos = plain._prefill(params, tokens, mask)
  assert "log_softmax" not in str(plain._decode.lower(params, logits, cache, pos, key).as_text())
  plain._decode(params, logits, cache, pos, key)
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(cache["layers"]))
  kept = sampling.Sampler(model, config, NO_EOS, donate_cache=False)
  logits, cache, pos = kept._prefill(params, tokens, mask)
  kept._decode(params, logits, cache, pos, key)
  assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(cache["layers"]))


def test_samples_of_one_prompt_share_its_prefill_and_equal_sampling_repeated_rows(lm):
  """repeats=3: each prompt prefilled once, its cache copied to 3 adjacent rows; the samples are
  those of the prompts repeated row by row (same key), and the rows of a prompt differ."""
  model, params = lm
  prompts = [[5, 6, 7, 8], [9] * 10, [40, 41, 42, 43, 44, 45]]
  config = sampling.SamplingConfig(max_new_tokens=12, temperature=1.0)
  sampler = sampling.Sampler(model, config, NO_EOS, logprobs=True)
  once = sampler(params, *sampling.left_pad(prompts), jax.random.PRNGKey(2), repeats=3)
  rows = sampling.Sampler(model, config, NO_EOS, logprobs=True)(
    params, *sampling.left_pad([p for p in prompts for _ in range(3)]), jax.random.PRNGKey(2)
  )
  np.testing.assert_array_equal(once.tokens, rows.tokens)
  np.testing.assert_allclose(once.logprobs, rows.logprobs, atol=1e-5)
  assert once.tokens.shape == (9, 12) and len({tuple(r) for r in np.asarray(once.tokens)[:3]}) > 1


@pytest.mark.slow
def test_the_generator_samples_without_the_padding_no_prompt_reaches(lm):
  """Prompts padded to max_prompt_len 256 whose longest has 70 tokens are sampled 128 columns wide
  (256 halved while the longest fits), with the samples of the full width; repeats give the same
  samples."""
  from rlaif_jax import data, generation, partitioning

  model, params = lm
  widths = [generation.prompt_width(np.ones((1, width)) * (np.arange(width) >= width - n)) for width, n in
            [(256, 3), (256, 64), (256, 65), (256, 200), (448, 150), (448, 100), (448, 30), (40, 3)]]  # fmt: skip
  assert widths == [64, 64, 128, 256, 224, 112, 112, 40]
  config = sampling.SamplingConfig(max_new_tokens=10, temperature=1.0)
  mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
  gen = generation.Generator(model, data.byte_vocabulary(), config, batch_size=4, max_prompt_len=256, mesh=mesh)
  rng = np.random.default_rng(1)
  prompts = [p for n in (70, 12) for p in [rng.integers(3, 259, size=n).tolist()] * 2]  # two samples of each
  tokens, mask = gen.pad_prompts([data.encoder.Context(p, 0) for p in prompts])
  key = jax.random.PRNGKey(3)
  full = sampling.Sampler(model, gen.config, gen.ids)(params, tokens, mask, key)
  widths = []
  sampler = gen.sampler
  gen.sampler = lambda p, t, m, k, **kw: widths.append(t.shape[1]) or sampler(p, t, m, k, **kw)
  for repeats in (1, 2):
    got = gen.sample_arrays(params, tokens, mask, key, repeats=repeats)
    np.testing.assert_array_equal(
      got.tokens, generation.cut_responses(np.asarray(full.tokens), np.asarray(full.mask), gen.stops, 0)[0]
    )
  assert widths == [128, 128]


@pytest.mark.slow
@pytest.mark.parametrize("every", [3, 7])
def test_checking_for_eos_less_often_changes_no_output(lm, every):
  """Several decode steps per loop iteration (40 new tokens: not a multiple of 3 or 7, so the last
  iteration runs past the end) give the tokens, log-probs and mask of one step per iteration,
  with rows ending early at EOS."""
  model, params = lm
  tokens, mask = sampling.left_pad([[5, 6, 7], [9] * 10, [40, 41, 42, 43, 44, 45]])
  greedy = sampling.SamplingConfig(max_new_tokens=40, temperature=0.0)
  eos = int(sampling.Sampler(model, greedy, NO_EOS)(params, tokens, mask, jax.random.PRNGKey(4)).tokens[0, 5])
  ended = []
  for temperature in (0.0, 1.0):
    config = sampling.SamplingConfig(max_new_tokens=40, temperature=temperature)
    ends = sampling.TokenIds(eos_id=eos)
    ref = sampling.Sampler(model, config, ends, logprobs=True)(params, tokens, mask, jax.random.PRNGKey(4))
    ended.append(not np.asarray(ref.mask).all())
    fewer = dataclasses.replace(config, eos_check_every=every)
    out = sampling.Sampler(model, fewer, ends, logprobs=True)(params, tokens, mask, jax.random.PRNGKey(4))
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.mask, ref.mask)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-6)
  assert ended[0]  # greedy row 0 ends by its sixth token
  assert fewer.decides() == config.decides()  # saved generations' made_with: they stay valid
  assert sampling.decode_steps_per_check(config) == 1  # None on CPU: no host wait to save
  with pytest.raises(ValueError, match="SamplingConfig.eos_check_every=0: must be a positive integer"):
    sampling.SamplingConfig(eos_check_every=0)


def test_left_padding_does_not_change_greedy_output(lm):
  model, params = lm
  config = sampling.SamplingConfig(max_new_tokens=12, temperature=0.0)
  sampler = sampling.Sampler(model, config, NO_EOS)
  alone = sampler(params, *sampling.left_pad([[10, 20, 30]]), jax.random.PRNGKey(0))
  batched = sampler(params, *sampling.left_pad([[10, 20, 30], list(range(50, 70))]), jax.random.PRNGKey(0))
  np.testing.assert_array_equal(alone.tokens[0], batched.tokens[0])


def _first_token_counts(temperature, top_k=0, top_p=1.0, n=6000):
  cfg = models.tiny(vocab_size=8, embed_dim=16, hidden_dim=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)
  model = models.Transformer(cfg)
  params = randomize(models.init_params(model, jax.random.PRNGKey(1)), scale=1.0)
  params = jax.tree_util.tree_map(lambda x: x * 0.5 if x.ndim == 2 and x.shape[0] == 8 else x, params)
  prompt, mask = sampling.left_pad([[2, 5, 3]] * n)
  config = sampling.SamplingConfig(max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p)
  out = sampling.Sampler(model, config, NO_EOS)(params, prompt, mask, jax.random.PRNGKey(7))
  logits = np.asarray(model.apply({"params": params}, prompt[:1], mask[:1])[0, -1], np.float64)
  return np.bincount(np.asarray(out.tokens[:, 0]), minlength=8), logits


def _softmax(x):
  e = np.exp(x - x[np.isfinite(x)].max())
  return e / e.sum()


@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.5, 0), (1.0, 3)])
def test_sampling_frequencies_match_softmax(temperature, top_k):
  counts, logits = _first_token_counts(temperature, top_k)
  scaled = logits / temperature
  if top_k:
    scaled = np.where(logits >= np.sort(logits)[-top_k], scaled, -np.inf)
  expected = _softmax(scaled) * counts.sum()
  assert counts[expected == 0].sum() == 0
  keep = expected > 0
  assert expected[keep].min() > 20  # enough mass per cell for the chi-square approximation
  _, p_value = stats.chisquare(counts[keep], expected[keep])
  assert p_value > 1e-3, (counts, expected)


@pytest.mark.parametrize("vocab", [7, 65_536])
def test_the_inverse_cdf_draw_follows_the_softmax_and_never_draws_a_filtered_token(vocab):
  """sampling.draw against numpy's softmax: thousands of draws over rows of random logits, most of
  a large vocabulary at -inf (top-k), the kept tokens at its start, middle and both ends."""
  rng = np.random.default_rng(3)
  kept = np.array([0, 1, vocab // 2, vocab - 2, vocab - 1])[: min(vocab, 5)]
  logits = np.full((4, vocab), -np.inf, np.float32)
  logits[:, kept] = rng.normal(size=(4, len(kept))) * 1.5
  keys = jax.random.split(jax.random.PRNGKey(0), 5000 if vocab < 100 else 2000)
  tokens = np.asarray(jax.jit(jax.vmap(sampling.draw, in_axes=(None, 0)))(jnp.asarray(logits), keys))  # [5000, 4]
  assert np.isin(tokens, kept).all()
  for row in range(4):
    counts = np.array([(tokens[:, row] == k).sum() for k in kept])
    expected = _softmax(logits[row].astype(np.float64))[kept] * len(keys)
    _, p_value = stats.chisquare(counts, expected)
    assert p_value > 1e-3, (counts, expected)
  one = np.full((1, vocab), -np.inf, np.float32)
  one[0, -1] = 0.0  # all mass on the last token: u near the total must still land on it
  assert (
    np.asarray(jax.vmap(sampling.draw, in_axes=(None, 0))(jnp.asarray(one), keys[:50])).ravel().tolist()
    == [vocab - 1] * 50
  )


def test_top_p_keeps_the_smallest_nucleus():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(50, 12)) * 2
  for top_p in (0.3, 0.7, 0.95):
    kept = np.isfinite(np.asarray(sampling.filter_logits(jnp.asarray(logits), top_p=top_p)))
    for row, keep in zip(logits, kept):
      probs = _softmax(row)
      order = np.argsort(-probs)
      n = int(np.searchsorted(np.cumsum(probs[order]), top_p) + 1)  # smallest prefix with mass >= top_p
      expected = np.zeros(12, bool)
      expected[order[:n]] = True
      np.testing.assert_array_equal(keep, expected)
