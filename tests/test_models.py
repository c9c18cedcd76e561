import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomize
from numpy_gemma import forward as numpy_forward
from numpy_gemma import rms_norm as np_rms_norm
from numpy_gemma import rope as np_rope

from rlaif_jax import models

LOGICAL_NAMES = {"batch", "length", "embed", "mlp", "heads", "kv_heads", "kv", "vocab"}


@pytest.mark.parametrize(
  "name, expected",
  [("gemma3_270m", 268_098_176), ("gemma3_1b", 999_885_952)],  # the published models' counts
)
def test_preset_parameter_counts(name, expected):
  model = models.Transformer(models.preset(name))
  shapes = jax.eval_shape(lambda r: models.init_params(model, r), jax.random.PRNGKey(0))
  assert models.count_params(shapes) == expected


def test_gemma3_layer_pattern():
  cfg = models.gemma3_1b()
  kinds = [t.value for t in cfg.attention_types]
  assert len(kinds) == 26
  assert [i for i, k in enumerate(kinds) if k == "global"] == [5, 11, 17, 23]


def test_rms_norm_matches_numpy():
  x = np.random.default_rng(0).normal(size=(3, 5, 32)).astype(np.float32) * 4
  norm = models.RMSNorm()
  scale = np.random.default_rng(1).normal(size=(32,)).astype(np.float32)
  y = norm.apply({"params": {"scale": scale}}, x)
  np.testing.assert_allclose(y, np_rms_norm(x.astype(np.float64), scale, 1e-6), rtol=1e-5, atol=1e-5)


def test_rope_matches_complex_rotation_and_is_relative():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 7, 3, 8)).astype(np.float32)
  pos = rng.integers(0, 1000, size=(1, 7))
  y = models.apply_rope(jnp.asarray(x), jnp.asarray(pos), 10_000.0, 2.0)
  np.testing.assert_allclose(y[0], np_rope(x[0].astype(np.float64), pos[0], 10_000.0, 2.0), atol=2e-4)
  # q.k after rotation depends only on the position difference.
  q, k = rng.normal(size=(2, 1, 1, 1, 8)).astype(np.float32)
  dot = lambda m, n: float(  # noqa: E731
    jnp.sum(models.apply_rope(q, jnp.array([[m]]), 100.0) * models.apply_rope(k, jnp.array([[n]]), 100.0))
  )
  assert dot(3, 1) == pytest.approx(dot(12, 10), abs=1e-4)


def test_attention_mask_matches_loops():
  rng = np.random.default_rng(0)
  valid = rng.random((2, 9)) > 0.3
  got = np.asarray(models.attention_mask(jnp.arange(3, 7), jnp.arange(9), jnp.asarray(valid), 3))
  for b in range(2):
    for qi, q in enumerate(range(3, 7)):
      for k in range(9):
        assert got[b, qi, k] == (valid[b, k] and k <= q and q - k < 3)


@pytest.mark.parametrize("soft_cap", [None, 5.0])
def test_forward_matches_numpy_reference(soft_cap):
  cfg = models.tiny(
    num_layers=3, sliding_window=5, final_logit_soft_cap=soft_cap, attn_logits_soft_cap=soft_cap, rope_scale_global=4.0
  )
  model = models.Transformer(cfg)
  params = randomize(models.init_params(model, jax.random.PRNGKey(3)))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, size=(2, 13))
  valid = np.ones((2, 13), bool)
  valid[1, :4] = False  # left padding
  logits = model.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(valid))
  for b in range(2):
    ref, _ = numpy_forward(params, cfg, tokens[b], valid[b])
    np.testing.assert_allclose(np.asarray(logits[b])[valid[b]], ref[valid[b]], rtol=2e-4, atol=2e-4)


def test_scalar_head_and_token_logits(tiny_model_and_params):
  model, params = tiny_model_and_params
  params = randomize(params)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 10), 0, 259)
  logits, scores = model.apply({"params": params}, tokens)
  assert logits.shape == (3, 10, 264) and scores.shape == (3, 10)
  hidden, _ = model.apply({"params": params}, tokens, method=models.Transformer.hidden_states)
  _, x_ref = numpy_forward(params, model.config, np.asarray(tokens[0]))
  expected = x_ref @ np.asarray(params["score_kernel"], np.float64) + float(params["score_bias"])
  np.testing.assert_allclose(scores[0], expected, rtol=1e-4, atol=1e-4)
  ids = jnp.array([3, 50, 51, 200])
  picked = model.apply({"params": params}, hidden[:, -1], ids, method=models.Transformer.token_logits)
  np.testing.assert_allclose(picked, logits[:, -1][:, ids], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("start", [1, 4])
def test_score_tokens_against_numpy(tiny_model_and_params, start):
  """models.score_tokens, the one way objectives score a sequence's tokens: log p, argmax and
  entropy of tokens[:, start:] and the value head there, from numpy's forward pass of each row
  (left padding included); packed rows score each segment as if it were alone."""
  model, params = tiny_model_and_params
  params = randomize(params)
  rng = np.random.default_rng(start)
  tokens = rng.integers(3, 259, size=(2, 11))
  valid = np.ones((2, 11), bool)
  valid[1, :2] = False
  got = models.score_tokens(model, params, jnp.asarray(tokens), jnp.asarray(valid), start=start)
  values = models.token_values(model, params, jnp.asarray(tokens), jnp.asarray(valid), start=start)
  for b in range(2):
    logits, x = numpy_forward(params, model.config, tokens[b, :-1], valid[b, :-1])
    logits, x = logits[start - 1 :], x[start - 1 :]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    keep = valid[b, start - 1 : -1]
    want = logp[np.arange(len(logp)), tokens[b, start:]]
    np.testing.assert_allclose(np.asarray(got.logp[b])[keep], want[keep], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(got.best[b])[keep], logits.argmax(-1)[keep])
    entropy = -(np.exp(logp) * logp).sum(-1)
    np.testing.assert_allclose(np.asarray(got.entropy[b])[keep], entropy[keep], rtol=1e-4, atol=1e-4)
    value = x @ np.asarray(params["score_kernel"], np.float64) + float(params["score_bias"])
    np.testing.assert_allclose(np.asarray(values[b])[keep], value[keep], rtol=1e-4, atol=1e-4)
  segments = np.array([[1] * 5 + [2] * 6] * 2)
  packed = models.score_tokens(model, params, jnp.asarray(tokens), jnp.ones((2, 11), bool), segment_ids=segments)
  alone = models.score_tokens(model, params, jnp.asarray(tokens[:, 5:]), jnp.ones((2, 6), bool))
  np.testing.assert_allclose(packed.logp[:, 5:], alone.logp, rtol=1e-5, atol=1e-5)


def test_every_parameter_has_logical_axes(tiny_model_and_params):
  model, _ = tiny_model_and_params
  boxed = jax.eval_shape(lambda r: models.init_params(model, r, boxed=True), jax.random.PRNGKey(0))
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  for leaf in leaves:
    if not isinstance(leaf, nn.Partitioned):
      assert leaf.shape == ()  # only the score bias, a scalar, has no axes
      continue
    assert set(leaf.names) <= LOGICAL_NAMES and len(leaf.names) == len(leaf.value.shape)


def test_bfloat16_compute_close_to_float32():
  cfg32 = models.tiny()
  model32 = models.Transformer(cfg32)
  params = models.init_params(model32, jax.random.PRNGKey(0))
  model16 = models.Transformer(cfg32.replace(dtype="bfloat16"))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 20), 0, 259)
  l32 = model32.apply({"params": params}, tokens)
  l16 = model16.apply({"params": params}, tokens)
  assert l16.dtype == jnp.float32  # logits always come out in float32
  assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32
  np.testing.assert_allclose(jax.nn.softmax(l16), jax.nn.softmax(l32), atol=0.03)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="num_kv_heads"):
    models.tiny(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="unknown model preset"):
    models.preset("gemma7")
