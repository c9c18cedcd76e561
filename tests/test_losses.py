import jax
import numpy as np
import pytest

from rlaif_jax import losses


def _np_soft_label(r_a, r_b, p):
  m = r_a.astype(np.float64) - r_b.astype(np.float64)
  log_sig = lambda x: -np.logaddexp(0.0, -x)  # noqa: E731
  return -np.mean(p * log_sig(m) + (1 - p) * log_sig(-m))


def test_soft_label_rm_loss_matches_numpy():
  rng = np.random.default_rng(0)
  for scale in (0.1, 3.0, 50.0):
    r_a, r_b = (rng.normal(size=(2, 257)) * scale).astype(np.float32)
    p = rng.random(257).astype(np.float32)
    assert float(losses.soft_label_rm_loss(r_a, r_b, p)) == pytest.approx(_np_soft_label(r_a, r_b, p), rel=1e-5)


def test_soft_label_rm_loss_extreme_margins_and_hard_labels():
  r_a = np.array([1e4, -1e4, 1e30, 0.0], np.float32)
  r_b = np.array([-1e4, 1e4, -1e30, 0.0], np.float32)
  p = np.array([1.0, 1.0, 0.0, 0.5], np.float32)
  loss = losses.soft_label_rm_loss(r_a, r_b, p)
  grads = jax.grad(lambda a: losses.soft_label_rm_loss(a, r_b, p))(r_a)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grads)))
  # right with certainty: 0; wrong by 2e4: 2e4; wrong by inf-ish: huge but finite; tie: log 2
  per_pair = [0.0, 2e4, 2e30, np.log(2)]
  assert float(loss) == pytest.approx(np.mean(per_pair), rel=1e-4)
  # The gradient with respect to r_a is -(p - sigmoid(margin)) / B.
  margin = np.float64(1.5)
  g = jax.grad(lambda a: losses.soft_label_rm_loss(a, np.zeros(1, np.float32), np.array([0.8], np.float32)))(
    np.array([margin], np.float32)
  )
  assert float(g[0]) == pytest.approx(-(0.8 - 1 / (1 + np.exp(-margin))), rel=1e-5)


def _np_rank_loss(p, s, valid):
  total = 0.0
  for b in range(p.shape[0]):
    for i in range(p.shape[1]):
      for j in range(p.shape[1]):
        if valid[b, i] and valid[b, j] and s[b, i] < s[b, j]:
          total += max(0.0, p[b, i] - p[b, j])
  return total / p.shape[0]


def test_rrhf_rank_loss_matches_loops_with_ties_and_ragged_k():
  rng = np.random.default_rng(0)
  p = rng.normal(size=(6, 5)).astype(np.float32)
  s = rng.integers(0, 3, size=(6, 5)).astype(np.float32)  # many ties
  valid = rng.random((6, 5)) > 0.3
  assert float(losses.rrhf_rank_loss(p, s, valid)) == pytest.approx(_np_rank_loss(p, s, valid), rel=1e-5)
  assert float(losses.rrhf_rank_loss(p, s)) == pytest.approx(_np_rank_loss(p, s, np.ones_like(valid)), rel=1e-5)
  # Ties contribute nothing; an ordering that agrees with the scores costs nothing.
  assert float(losses.rrhf_rank_loss(p, np.zeros_like(s))) == 0.0
  ordered = np.sort(p, axis=1)
  assert float(losses.rrhf_rank_loss(ordered, np.tile(np.arange(5.0), (6, 1)))) == 0.0


def test_sequence_logprob_and_rrhf_sft_loss_match_numpy():
  rng = np.random.default_rng(1)
  logp = -rng.random((4, 3, 7)).astype(np.float32)
  mask = rng.random((4, 3, 7)) > 0.3
  scores = rng.normal(size=(4, 3)).astype(np.float32)
  valid = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0]], bool)
  seq = np.asarray(losses.sequence_logprob(logp, mask))
  np.testing.assert_allclose(seq, (logp * mask).sum(-1) / np.maximum(mask.sum(-1), 1), rtol=1e-6)
  best = np.argmax(np.where(valid, scores, -np.inf), axis=1)
  expected = -np.mean([(logp[b, best[b]] * mask[b, best[b]]).sum() for b in range(4)])
  assert float(losses.rrhf_sft_loss(logp, mask, scores, valid)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("slices, vocab, cap", [(1, 50, None), (8, 50, None), (3, 48, 30.0), (16, 50, 5.0)])
def test_streamed_token_stats_match_numpy_and_full_logit_gradients(slices, vocab, cap):
  """log p(target), argmax and entropy from vocabulary slices equal numpy's over the full logits
  (random inputs, a vocabulary that does not divide into the slices, soft cap on and off); the
  gradients equal autodiff through the full [B, T, V] logits."""
  import jax.numpy as jnp

  rng = np.random.default_rng(slices + vocab)
  hidden = rng.normal(size=(3, 5, 16)).astype(np.float32)
  table = rng.normal(size=(vocab, 16)).astype(np.float32)
  targets = rng.integers(0, vocab, size=(3, 5))
  targets[0, 0] = vocab - 1  # the last row, which sits in a padded slice when slices do not divide
  logits = hidden @ table.T
  if cap is not None:
    logits = np.tanh(logits / cap) * cap
  logits = logits.astype(np.float64)
  lse = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  logp_all = logits - lse[..., None]
  logp, best, entropy = losses.streamed_token_stats(jnp.asarray(hidden), jnp.asarray(table), targets, slices, cap)
  np.testing.assert_allclose(logp, np.take_along_axis(logp_all, targets[..., None], -1)[..., 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(best, logits.argmax(-1))
  np.testing.assert_allclose(entropy, -np.sum(np.exp(logp_all) * logp_all, -1), rtol=1e-5, atol=1e-5)

  weights = rng.normal(size=(2, 3, 5)).astype(np.float32)

  def streamed(h, t):
    lp, _, ent = losses.streamed_token_stats(h, t, targets, slices, cap)
    return jnp.sum(lp * weights[0]) + jnp.sum(ent * weights[1])

  def full(h, t):
    z = jnp.einsum("BTD,VD->BTV", h, t)
    z = z if cap is None else jnp.tanh(z / cap) * cap
    lp = jax.nn.log_softmax(z, -1)
    ent = -jnp.sum(jnp.exp(lp) * lp, -1)
    return jnp.sum(losses.token_log_probs(z, targets) * weights[0]) + jnp.sum(ent * weights[1])

  got = jax.grad(streamed, argnums=(0, 1))(jnp.asarray(hidden), jnp.asarray(table))
  want = jax.grad(full, argnums=(0, 1))(jnp.asarray(hidden), jnp.asarray(table))
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
