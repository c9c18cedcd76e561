import jax
import numpy as np
import pytest

from rlaif_jax import metrics
from rlaif_jax.labeling import debias_preference, direct_score, preference_from_logits


def test_preference_from_logits_matches_numpy_including_extremes():
  rng = np.random.default_rng(0)
  l1, l2 = rng.normal(size=(2, 1000)) * 10
  l1[:5], l2[:5] = [1e4, -1e4, 3e38, 0, 88.0], [-1e4, 1e4, 3e38, 1e-30, -88.0]
  got = np.asarray(preference_from_logits(l1.astype(np.float32), l2.astype(np.float32)))
  a, b = l1.astype(np.float64), l2.astype(np.float64)
  m = np.maximum(a, b)
  expected = np.exp(a - m) / (np.exp(a - m) + np.exp(b - m))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert got[0] == 1.0 and got[1] == 0.0 and got[2] == 0.5


def test_debias_preference_is_the_mean_over_orders():
  rng = np.random.default_rng(1)
  p_ab, p_ba = rng.random((2, 500))
  np.testing.assert_allclose(debias_preference(p_ab, p_ba), (p_ab + (1 - p_ba)) / 2, atol=1e-7)
  # A labeler that always says "1" is perfectly position-biased and debiases to 0.5.
  np.testing.assert_allclose(debias_preference(np.ones(3), np.ones(3)), 0.5)


def test_direct_score_matches_numpy_and_spans_minus_one_to_one():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(200, 10)) * 5
  e = np.exp(logits - logits.max(-1, keepdims=True))
  expected = ((e / e.sum(-1, keepdims=True)) @ np.arange(1, 11) - 5.5) / 4.5
  np.testing.assert_allclose(direct_score(logits.astype(np.float32)), expected, atol=1e-5)
  onehot = np.full((2, 10), -1e4, np.float32)
  onehot[0, 0], onehot[1, 9] = 1e4, 1e4
  np.testing.assert_allclose(direct_score(onehot), [-1.0, 1.0], atol=1e-6)
  # log-probabilities give the same score as logits (softmax ignores a per-row shift)
  logp = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(direct_score(logp), expected, atol=1e-5)


def test_alignment_accuracy_matches_numpy():
  rng = np.random.default_rng(3)
  p, human = rng.random(300), rng.integers(0, 2, 300)
  expected = np.mean(np.where(p > 0.5, 0, 1) == human)
  assert float(metrics.alignment_accuracy(p, human)) == pytest.approx(expected)
  assert float(metrics.alignment_accuracy(np.array([0.9, 0.2]), np.array([0, 1]))) == 1.0
