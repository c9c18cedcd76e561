"""REINFORCE with a value baseline and KL penalty: the math against numpy and hand-derived
gradients, alignment of positions with the sampler, sharded updates, the loop's learning,
exact resume, no recompiles, and the RM / direct-labeler reward paths."""

import dataclasses
import functools
import json
import os
import shutil
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sft_helpers import comparable_optimizer, one_device_mesh, tiny_model, to_numpy

import rlaif_jax.tasks  # noqa: F401
from rlaif_jax import data, generation, models, optimizers, partitioning, reward, rl, sampling, scorers, trainer
from rlaif_jax.checkpoints import Checkpointer
from rlaif_jax.models import load_model_params
from rlaif_jax.stages.rl import run_rl


def ragged_mask(rng, b, t):
  lengths = rng.integers(0, t + 1, size=b)
  lengths[0], lengths[1] = 0, t  # an empty response and a full one
  return (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)


def numpy_targets(reward, logp, ref_logp, values, mask, kl_coef):
  """The API text, one token at a time."""
  b, t = mask.shape
  returns, advantages = np.zeros((b, t)), np.zeros((b, t))
  for i in range(b):
    valid = [j for j in range(t) if mask[i, j]]
    r = {j: -kl_coef[i] * (logp[i, j] - ref_logp[i, j]) for j in valid}
    if valid:
      r[valid[-1]] += (1 - kl_coef[i]) * reward[i]
    for j in valid:
      returns[i, j] = sum(r[k] for k in valid if k >= j)
      advantages[i, j] = returns[i, j] - values[i, j]
  return returns, advantages


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinforce_targets_match_numpy(seed):
  rng = np.random.default_rng(seed)
  b, t = 7, 11
  mask = ragged_mask(rng, b, t)
  reward, logp, ref_logp, values = (rng.normal(size=s).astype(np.float32) for s in [(b,), (b, t), (b, t), (b, t)])
  logp, ref_logp = -np.abs(logp), -np.abs(ref_logp)
  kl = float(rng.uniform(0, 0.5))
  want = numpy_targets(reward, logp, ref_logp, values, mask, np.full(b, kl))
  got = jax.jit(rl.reinforce_targets)(reward, logp, ref_logp, values, mask, kl)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-5)
  assert not np.any(np.asarray(got[0])[mask == 0]) and not np.any(np.asarray(got[1])[mask == 0])
  per_row = rng.uniform(0, 0.5, size=b).astype(np.float32)  # one coefficient per row also works
  got = rl.reinforce_targets(reward, logp, ref_logp, values, mask, per_row)
  np.testing.assert_allclose(
    np.asarray(got[0]), numpy_targets(reward, logp, ref_logp, values, mask, per_row)[0], 1e-5, 1e-5
  )


def test_reinforce_targets_hand_case():
  # Three tokens, alpha 0.1, R = 2: r = [-0.1*0.5, -0.1*(-1), -0.1*0.2 + 0.9*2] = [-0.05, 0.1, 1.78].
  logp, ref = np.array([[-1.0, -2.0, -0.3, -9.0]]), np.array([[-1.5, -1.0, -0.5, -1.0]])
  mask = np.array([[1, 1, 1, 0]])
  returns, adv = rl.reinforce_targets(np.array([2.0]), logp, ref, np.array([[0.5, 0.0, 1.0, 7.0]]), mask, 0.1)
  np.testing.assert_allclose(np.asarray(returns), [[1.83, 1.88, 1.78, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(adv), [[1.33, 1.88, 0.78, 0.0]], rtol=1e-6)


def test_losses_whitening_and_explained_variance_match_numpy():
  rng = np.random.default_rng(3)
  b, t = 6, 9
  mask = ragged_mask(rng, b, t)
  logp, adv, values, returns = (rng.normal(size=(b, t)).astype(np.float32) for _ in range(4))
  n = mask.sum()
  np.testing.assert_allclose(float(rl.policy_loss(logp, adv, mask)), -(adv * logp * mask).sum() / n, rtol=1e-5)
  np.testing.assert_allclose(
    float(rl.value_loss(values, returns, mask)), ((values - returns) ** 2 * mask).sum() / n, 1e-5
  )
  valid = mask > 0
  white = np.asarray(rl.masked_whiten(adv, mask))
  want = (adv[valid] - adv[valid].mean()) / adv[valid].std()
  np.testing.assert_allclose(white[valid], want, rtol=1e-4, atol=1e-5)
  assert not np.any(white[~valid])
  ev = 1 - np.var(returns[valid] - values[valid]) / np.var(returns[valid])
  np.testing.assert_allclose(float(rl.explained_variance(values, returns, mask)), ev, rtol=1e-4)
  logits = rng.normal(size=(3, 5)).astype(np.float32) * 3
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(rl.token_entropy(logits)), -(p * np.log(p)).sum(-1), rtol=1e-5)


def test_policy_loss_gradient_hand_derived_and_finite_difference():
  """d/dlogits of -sum_t A_t log softmax(z_t)[y_t] / n is -(A_t / n)(onehot(y_t) - softmax(z_t))."""
  rng = np.random.default_rng(4)
  b, t, v = 3, 5, 7
  logits = rng.normal(size=(b, t, v)).astype(np.float32)
  targets = rng.integers(0, v, size=(b, t))
  adv = rng.normal(size=(b, t)).astype(np.float32)
  mask = ragged_mask(rng, b, t)

  def loss(z):
    from rlaif_jax import losses

    return rl.policy_loss(losses.token_log_probs(z, targets), adv, mask)

  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  want = -(adv * mask / mask.sum())[..., None] * (np.eye(v)[targets] - p)
  np.testing.assert_allclose(np.asarray(jax.grad(loss)(logits)), want, rtol=1e-4, atol=1e-7)

  # The same loss through a tiny decoder: the gradient along a random direction of the
  # parameters equals a central finite difference of the loss.
  model = tiny_model()
  params = models.init_params(model, jax.random.PRNGKey(0))
  tokens = jnp.asarray(rng.integers(2, 200, size=(2, 12)), jnp.int32)
  input_mask = jnp.ones((2, 12), bool)
  a = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
  m = jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 1]], jnp.float32)

  def model_loss(p):
    logp, _ = rl.policy_token_stats(model, p, tokens, input_mask, 8)
    return rl.policy_loss(logp, a, m)

  direction = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
  norm = jnp.sqrt(sum(jnp.sum(d**2) for d in jax.tree_util.tree_leaves(direction)))
  direction = jax.tree_util.tree_map(lambda d: d / norm, direction)
  grad = jax.grad(model_loss)(params)
  analytic = sum(jnp.sum(g * d) for g, d in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction)))
  eps = 1e-2
  shifted = lambda s: jax.tree_util.tree_map(lambda x, d: x + s * eps * d, params, direction)  # noqa: E731
  numeric = (model_loss(shifted(1)) - model_loss(shifted(-1))) / (2 * eps)
  np.testing.assert_allclose(float(analytic), float(numeric), rtol=2e-2, atol=1e-4)


def test_kl_controller_and_running_moments():
  assert rl.adaptive_kl_coef(0.1, 6.0, 3.0, 100, 10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped to +20%
  assert rl.adaptive_kl_coef(0.1, 2.7, 3.0, 100, 10) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
  moments = rl.RunningMoments()
  rng = np.random.default_rng(5)
  chunks = [rng.normal(2, 3, size=n) for n in (5, 1, 17)]
  for c in chunks:
    moments.update(c)
  everything = np.concatenate(chunks)
  assert moments.count == 23
  np.testing.assert_allclose([moments.mean, moments.std], [everything.mean(), everything.std()], rtol=1e-10)


def test_cut_responses_and_shape_rewards():
  eos, nl, pad = 1, 10, 0
  tokens = np.array([[5, 6, eos, 0, 0], [5, nl, 7, eos, 0], [5, 6, 7, 8, 9]])
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
  t, m, ended = generation.cut_responses(tokens, mask, [eos, nl], pad)
  np.testing.assert_array_equal(m, [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(t[1], [5, nl, 0, 0, 0])
  np.testing.assert_array_equal(ended, [True, True, False])
  _, m, ended = generation.cut_responses(tokens, mask, [eos], pad)  # without the newline stop
  np.testing.assert_array_equal(m[1], [1, 1, 1, 1, 0])
  config = rl.RLConfig(reward_normalization="running", reward_clip=1.0, missing_eos_penalty=0.5)
  moments = rl.RunningMoments()
  raw = np.array([0.0, 1.0, 5.0])
  z = (raw - raw.mean()) / raw.std()
  np.testing.assert_allclose(
    rl.shape_rewards(raw, [True, True, False], config, moments), np.clip(z, -1, 1) - [0, 0, 0.5], rtol=1e-6
  )


PIECES = ["", "", "Hi", "!", "\n", "\nHu", "man", ":", " ok", "\n\nHuman:", "H", "u", "m", "a", "n"]


def _pieces_text(ids) -> str:
  return "".join(PIECES[int(i)] for i in ids)


def test_a_dialogue_reply_ends_with_the_token_that_completes_the_next_turn():
  """Hand-made rows of multi-character tokens: the marker split over three tokens, in one token,
  first, absent, and after EOS."""
  marker, eos, pad = "\n\nHuman:", 1, 0
  tokens = np.array(
    [
      [2, 3, 4, 5, 6, 7, 8],  # "Hi!" + "\n" + "\nHu" + "man" + ":" completes it + " ok"
      [2, 9, 8, 8, 0, 0, 0],  # one token is the whole marker
      [9, 2, 3, 0, 0, 0, 0],  # the reply is empty: the next turn comes at once
      [2, 3, eos, 9, 0, 0, 0],  # EOS first: what follows is not the reply's
      [2, 4, 4, 8, 8, 8, 8],  # no marker: the length cap cut it
    ]
  )
  mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 3 + [0] * 4, [1] * 4 + [0] * 3, [1] * 7], bool)
  t, m, ended = generation.cut_responses(tokens, mask, [eos], pad)
  t, m, ended = generation.cut_at_text(t, m, ended, lambda ids: _pieces_text(i for i in ids if i != eos), marker, pad)
  np.testing.assert_array_equal(m.sum(axis=1), [6, 2, 1, 3, 7])
  np.testing.assert_array_equal(ended, [True, True, True, True, False])
  np.testing.assert_array_equal(t[0], [2, 3, 4, 5, 6, 7, pad])
  np.testing.assert_array_equal(t[4], tokens[4])


def test_the_text_cut_is_the_first_prefix_that_holds_the_marker_on_random_rows():
  """Against a linear scan over every prefix, on random rows of pieces that often spell the marker
  across tokens."""
  rng = np.random.default_rng(0)
  marker = "\n\nHuman:"
  choices = [2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14]
  weights = np.array([1, 1, 4, 4, 4, 4, 0.6, 1, 1, 1, 1, 1])  # "\n" "\nHu" "man" ":" often, the whole marker seldom
  tokens = rng.choice(choices, size=(200, 12), p=weights / weights.sum())
  mask = np.ones_like(tokens, bool)
  for r, n in enumerate(rng.integers(1, 13, size=200)):
    mask[r, n:] = False
  tokens = np.where(mask, tokens, 0)
  t, m, ended = generation.cut_at_text(tokens, mask, np.zeros(200, bool), _pieces_text, marker, 0)
  hits = 0
  for r in range(200):
    n = int(mask[r].sum())
    first = next((k for k in range(1, n + 1) if marker in _pieces_text(tokens[r, :k])), None)
    assert m[r].sum() == (n if first is None else first) and ended[r] == (first is not None)
    np.testing.assert_array_equal(t[r], np.where(m[r], tokens[r], 0))
    hits += first is not None
  assert 20 < hits < 180  # both kinds of rows were tried


def test_the_generator_cuts_tokens_and_text_at_the_next_turn():
  """Generator.sample_arrays on fixed sampler output (byte vocabulary): the mask RL trains on ends
  at the marker's last token, the text before the marker."""
  vocab = data.byte_vocabulary()
  rule = generation.StopRule(text_stop="\n\nHuman:", strip=False)
  gen = generation.Generator(
    tiny_model(), vocab, sampling.SamplingConfig(16), batch_size=2, max_prompt_len=4, stop=rule, mesh=one_device_mesh()
  )
  replies = [" Sure.\n\nHuman: thanks", " No."]
  ids = [list(vocab.encode(r)) + [vocab.eos_id] for r in replies]
  tokens, mask = np.zeros((2, 24), np.int32), np.zeros((2, 24), bool)
  for i, row in enumerate(ids):
    tokens[i, : len(row)], mask[i, : len(row)] = row, True
  gen.sampler = lambda *args, **kwargs: sampling.SampleOutput(tokens, np.zeros(tokens.shape, np.float32), mask)
  out = gen.sample_arrays(
    None, *gen.pad_prompts([data.encoder.Context([5], 0), data.encoder.Context([6], 0)]), jax.random.PRNGKey(0)
  )
  assert out.texts == [" Sure.", " No."]
  np.testing.assert_array_equal(out.mask.sum(axis=1), [len(" Sure.\n\nHuman:"), len(" No.") + 1])
  np.testing.assert_array_equal(out.ended, [True, True])


@pytest.mark.slow
def test_rollout_positions_agree_with_the_sampler():
  """The log-probs the rollout pass computes for sampled tokens are the sampler's own, and the
  values are read one position before each response token."""
  model = tiny_model()
  value = models.Transformer(model.config, scalar_head=True)
  params = models.init_params(model, jax.random.PRNGKey(1))
  vparams = reward.init_from_lm(value, params, jax.random.PRNGKey(2))
  vparams["score_kernel"] = jax.random.normal(jax.random.PRNGKey(3), vparams["score_kernel"].shape)
  p_len, n = 10, 6
  prompts = [[5, 6, 7], list(range(20, 30)), [40, 41, 42, 43, 44]]
  ptok, pmask = sampling.left_pad(prompts, 0, p_len)
  config = sampling.SamplingConfig(n, 1.0)
  out = sampling.Sampler(model, config, sampling.TokenIds(eos_id=1, pad_id=0), logprobs=True)(
    params, ptok, pmask, jax.random.PRNGKey(7)
  )
  tokens = np.concatenate([ptok, np.asarray(out.tokens)], 1)
  input_mask = np.concatenate([pmask, np.asarray(out.mask)], 1)
  objective = rl.Reinforce(model, value, p_len)
  batch = {"tokens": tokens, "input_mask": input_mask, "response_mask": np.asarray(out.mask), "reward": np.ones(3)}
  targets, _ = objective.targets({"policy": params, "value": vparams}, params, batch, 0.1)
  keep = np.asarray(out.mask)
  np.testing.assert_allclose(np.asarray(targets["old_logp"])[keep], np.asarray(out.logprobs)[keep], atol=2e-4)
  np.testing.assert_allclose(np.asarray(targets["ref_logp"])[keep], np.asarray(out.logprobs)[keep], atol=2e-4)
  # V(x, y_<j) for row 1 (no padding) at j = 0 is the score after the prompt alone.
  hidden, _ = value.apply({"params": vparams}, tokens[1:2, :p_len], method=models.Transformer.hidden_states)
  v0 = value.apply({"params": vparams}, hidden, method=models.Transformer.scores)[0, -1]
  values = rl.token_values(value, vparams, tokens, input_mask, p_len)
  np.testing.assert_allclose(float(values[1, 0]), float(v0), rtol=1e-5, atol=1e-6)


def rl_trainer(mesh, config=rl.RLConfig(update_epochs=1)):
  model = tiny_model()
  value = models.Transformer(model.config, scalar_head=True)
  objective = rl.Reinforce(model, value, 8, config)

  def init(rng):
    a, b = jax.random.split(rng)
    return {"policy": models.init_params(model, a, boxed=True), "value": models.init_params(value, b, boxed=True)}

  opt = rl.two_optimizers(comparable_optimizer(), comparable_optimizer())  # parameters are compared across meshes
  return objective, trainer.Trainer(objective.loss_fn, init, opt, mesh, norms_per_model=True)


def rl_batch(seed=0, b=8):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, 250, size=(b, 20)).astype(np.int32)
  input_mask = np.ones((b, 20), bool)
  input_mask[:, :3] = rng.random((b, 3)) < 0.5  # some left padding
  response_mask = ragged_mask(rng, b, 12).astype(bool)
  response_mask[:, 0] = True
  input_mask[:, 8:] = response_mask
  return {"tokens": tokens, "input_mask": input_mask, "response_mask": response_mask, "reward": rng.normal(size=b)}


def one_rl_step(mesh):
  objective, t = rl_trainer(mesh)
  rng = jax.random.PRNGKey(0)
  state = t.init_state(rng)
  ref = to_numpy(state.params["policy"])
  rollout = rl_batch()
  with partitioning.axis_rules(mesh, partitioning.DEFAULT_RULES):
    targets, metrics = jax.jit(objective.targets)(
      state.params, ref, partitioning.shard_batch(rollout, mesh), np.float32(0.05)
    )
  batch = {k: v for k, v in rollout.items() if k != "reward"} | {k: np.asarray(v) for k, v in targets.items()}
  state, step_metrics = t.step(state, batch, rng)
  return float(metrics["explained_variance"]), jax.device_get(step_metrics), to_numpy(state.params)


@pytest.mark.parametrize(
  "shape", [{"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}], ids=["data=8", "data,fsdp,tensor"]
)
@pytest.mark.slow
def test_sharded_rl_update_equals_single_device(shape):
  ev_ref, metrics_ref, params_ref = one_rl_step(one_device_mesh())
  ev, metrics, params = one_rl_step(partitioning.make_mesh(shape))
  np.testing.assert_allclose(ev, ev_ref, rtol=1e-5, atol=1e-6)
  for key in ("loss", "policy_loss", "value_loss", "grad_norm/policy", "grad_norm/value"):
    np.testing.assert_allclose(metrics[key], metrics_ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, params_ref)


def lowercase_fraction(inputs, responses):
  """Toy reward with a known optimum (1): the fraction of lowercase ASCII letters in the
  response; a random byte-level policy starts near 26/264."""
  return np.asarray([sum("a" <= c <= "z" for c in r) / len(r) if r else 0.0 for r in responses], np.float32)


def tiny_source():
  return models.ModelSource(config=tiny_model().config)


def toy_run(
  workdir, num_iterations, kl_coef=0.02, scorer_fn=lowercase_fraction, lr=3e-3, estimator=None, batch_size=16, **config
):
  config = rl.RLConfig(**(dict(kl_coef=kl_coef, update_epochs=2, minibatches=2) | config))
  return run_rl(
    str(workdir),
    tiny_source(),
    scorer_fn,
    estimator=estimator or rl.Reinforce.build,
    task="tldr_prompts",
    config=config,
    sampling_config=sampling.SamplingConfig(max_new_tokens=16, temperature=1.0),
    max_prompt_len=32,
    batch_size=batch_size,
    num_iterations=num_iterations,
    policy_optimizer=optimizers.adamw(lr),
    value_optimizer=optimizers.adamw(lr),
    mesh_shape={"data": 2},
    checkpoint_every=2,
    sample_every=5,
    tensorboard=False,
    progress=False,
  )


def metric_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_rl_raises_a_toy_reward_and_a_larger_kl_coef_keeps_kl_smaller(tmp_path):
  loose = toy_run(tmp_path / "loose", 20, kl_coef=0.02)
  tight = toy_run(tmp_path / "tight", 20, kl_coef=0.5)
  rows_loose, rows_tight = metric_rows(tmp_path / "loose"), metric_rows(tmp_path / "tight")
  start = rows_loose[0]["reward_raw_mean"]
  late_reward = np.mean([r["reward_raw_mean"] for r in rows_loose[-6:]])
  assert late_reward > start + 0.3, (start, late_reward)  # from about 0.1 toward 1
  late_kl = lambda rows: np.mean([r["kl"] for r in rows[-8:]])  # noqa: E731
  assert late_kl(rows_tight) < late_kl(rows_loose), (late_kl(rows_tight), late_kl(rows_loose))
  assert all(np.isfinite(r["kl"]) and r["kl"] < 40 for r in rows_loose)  # bounded: far below N log V = 89
  assert loose["compilations"] == {"sampler_prefill": 1, "sampler_decode": 1, "rollout_targets": 1, "update_step": 1}
  assert os.path.exists(loose["curves_png"]) and tight["reward_first"] == loose["reward_first"]


@pytest.mark.slow
def test_rl_resumes_exactly_and_compiles_once(tmp_path):
  options = dict(reward_normalization="running", target_kl=1.0, kl_horizon=50, missing_eos_penalty=0.1)
  straight = toy_run(tmp_path / "straight", 4, **options)
  toy_run(tmp_path / "resumed", 3, **options)  # checkpoints at 2 and 3; samples at iterations 1 and 3
  saved = Checkpointer(str(tmp_path / "resumed" / "checkpoints")).all_steps()  # update steps: 4 per iteration
  shutil.rmtree(
    tmp_path / "resumed" / "checkpoints" / str(saved[-1])
  )  # killed after logging iteration 3, before saving it
  resumed = toy_run(tmp_path / "resumed", 4, **options)  # resumes at 2: iteration 3 is logged and sampled once
  with open(tmp_path / "resumed" / "samples.jsonl") as f:
    sampled = [json.loads(line)["iteration"] for line in f]
  assert sorted(set(sampled)) == [1, 3, 4] and sampled.count(3) == sampled.count(1)
  assert straight["compilations"] == {"sampler_prefill": 1, "sampler_decode": 1, "rollout_targets": 1, "update_step": 1}
  assert straight["kl_coef_final"] == resumed["kl_coef_final"] != 0.02  # the controller moved and was restored
  a, b = metric_rows(tmp_path / "straight"), metric_rows(tmp_path / "resumed")
  assert [r["step"] for r in b] == [1, 2, 3, 4]
  for ra, rb in zip(a, b):
    for key in ("reward_mean", "reward_raw_mean", "kl", "loss", "kl_coef"):
      assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-7), (ra["step"], key)
  load = functools.partial(
    Checkpointer(str(tmp_path / "straight" / "checkpoints")).manager.restore, 16
  )  # 4 iterations x 4 updates
  final_a = to_numpy(load()["params"])
  final_b = to_numpy(Checkpointer(str(tmp_path / "resumed" / "checkpoints")).manager.restore(16)["params"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, final_a, final_b)
  # Other stages load the policy from an RL run's checkpoints folder like any model's.
  folder = str(tmp_path / "straight" / "checkpoints")
  policy = load_model_params(tiny_model(), one_device_mesh(), folder)
  jax.tree_util.tree_map(np.testing.assert_array_equal, to_numpy(policy), final_a["policy"])
  with pytest.raises(ValueError, match="does not hold parameters of this model's shapes"):
    load_model_params(models.Transformer(models.tiny(embed_dim=16)), one_device_mesh(), folder)
  samples = [json.loads(line) for line in open(tmp_path / "straight" / "samples.jsonl")]
  assert {s["iteration"] for s in samples} == {1, 4} and all("response" in s for s in samples)


@pytest.mark.slow
def test_direct_rlaif_reward_is_the_labelers_score(tmp_path):
  config = rl.RLConfig()
  summary = run_rl(
    str(tmp_path),
    tiny_source(),
    scorers.DirectScorer(task="summarization"),
    config=config,
    sampling_config=sampling.SamplingConfig(max_new_tokens=8, temperature=0.9),
    max_prompt_len=32,
    batch_size=4,
    num_iterations=1,
    num_samples=4,
    mesh_shape={"data": 1},
    tensorboard=False,
    progress=False,
  )
  samples = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
  assert len(samples) == 4 and summary["iterations"] == 1
  # the value baseline's explained variance of the last batch, as logged, is in the summary the report reads
  assert summary["explained_variance_last"] == metric_rows(tmp_path)[-1]["explained_variance"]
  score = scorers.prepare(
    scorers.DirectScorer(task="summarization"), scorers.ScoringContext(one_device_mesh(), 40, tiny_source())
  )
  want = score([s["prompt"] for s in samples], [s["response"] for s in samples])
  np.testing.assert_allclose([s["raw_reward"] for s in samples], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose([s["reward"] for s in samples], want, rtol=1e-5, atol=1e-6)  # no shaping by default
  assert np.all(np.abs(want) <= 1)


@pytest.mark.slow
def test_distilled_reward_is_the_normalized_rm_score(tmp_path):
  """RewardModelScorer with rm_stats normalization: R = (RM(x, y) - mean) / std of the RM's stats."""
  config = tiny_model().config
  rm_model = models.Transformer(config, scalar_head=True)
  rm_params = reward.init_from_lm(
    rm_model, models.init_params(tiny_model(), jax.random.PRNGKey(5)), jax.random.PRNGKey(6)
  )
  rm_params["score_kernel"] = jax.random.normal(jax.random.PRNGKey(7), rm_params["score_kernel"].shape)
  rm_dir = tmp_path / "rm"
  ckpt = Checkpointer(str(rm_dir / "checkpoints"))
  ckpt.save(1, {"step": 1, "params": rm_params}, force=True)
  ckpt.close()
  (rm_dir / reward.STATS_FILE).write_text(json.dumps({"mean": 0.3, "std": 2.0, "count": 10}))
  run_rl(
    str(tmp_path / "rl"),
    tiny_source(),
    scorers.RewardModelScorer(workdir=str(rm_dir)),
    config=rl.RLConfig(reward_normalization="rm_stats"),
    sampling_config=sampling.SamplingConfig(max_new_tokens=8, temperature=0.9),
    max_prompt_len=32,
    batch_size=4,
    num_iterations=1,
    mesh_shape={"data": 1},
    tensorboard=False,
    progress=False,
  )
  samples = [json.loads(line) for line in open(tmp_path / "rl" / "samples.jsonl")]
  scorer = reward.RewardScorer(
    rm_model, rm_params, data.byte_vocabulary(), max_len=40, batch_size=4, mesh=one_device_mesh()
  )
  raw = scorer.score([s["prompt"] for s in samples], [s["response"] for s in samples])
  np.testing.assert_allclose([s["raw_reward"] for s in samples], (raw - 0.3) / 2.0, rtol=1e-4, atol=1e-5)


def test_rl_errors_name_the_setting(tmp_path):
  with pytest.raises(ValueError, match="reward_normalization"):
    toy_run(tmp_path, 1, reward_normalization="batch")
  with pytest.raises(ValueError, match="rm_stats"):
    toy_run(tmp_path, 1, reward_normalization="rm_stats")
  with pytest.raises(ValueError, match="minibatches"):
    toy_run(tmp_path, 1, minibatches=3)
  with pytest.raises(ValueError, match="RewardModelScorer.workdir"):
    run_rl(str(tmp_path), tiny_source(), scorers.RewardModelScorer(), mesh_shape={"data": 1})
  with pytest.raises(ValueError, match="HumanScorer"):
    run_rl(str(tmp_path), tiny_source(), scorers.HumanScorer(), mesh_shape={"data": 1})


@dataclasses.dataclass(frozen=True)
class LeaveOneOut(rl.Estimator):
  """A toy value-free estimator with two samples per prompt, defined outside the library: what RLOO
  would add as one module (the rl.Estimator protocol; nothing else in the library changes). It
  trains only the policy, on -A log pi with A = r - (the other sample's r)."""

  policy: models.Transformer
  prompt_len: int
  config: rl.RLConfig
  samples_per_prompt: int = 2
  method: ClassVar[str] = "leave-one-out"

  @classmethod
  def build(cls, policy, prompt_len, config):
    return cls(policy, prompt_len, config)

  def init_params(self, rng):
    return {rl.POLICY: models.init_params(self.policy, rng, boxed=True)}

  def initial_params(self, ref_params, rng):
    return {rl.POLICY: ref_params}

  def optimizer(self, policy_optimizer, value_optimizer):
    return policy_optimizer  # one model: the policy's optimizer over {"policy": ...}

  def targets(self, params, ref_params, batch, kl_coef):
    mask = batch["response_mask"].astype(jnp.float32)
    pairs = batch["reward"].reshape(-1, 2)  # the two samples of each prompt are adjacent rows
    advantages = (pairs - pairs[:, ::-1]).reshape(-1)
    return {"advantages": advantages[:, None] * mask}, {"advantage_0": advantages[0], "advantage_1": advantages[1]}

  def loss_fn(self, params, batch, rng):
    mask = batch["response_mask"].astype(jnp.float32)
    logp, _ = rl.policy_token_stats(
      self.policy, params[rl.POLICY], batch["tokens"], batch["input_mask"], self.prompt_len
    )
    loss = rl.policy_loss(logp, batch["advantages"], mask)
    return loss, {"policy_loss": loss, "weight": jnp.sum(mask)}


@pytest.mark.slow
def test_the_rollout_loop_runs_a_new_estimator_with_k_samples_per_prompt(tmp_path):
  summary = toy_run(tmp_path, 2, estimator=LeaveOneOut.build, update_epochs=1, minibatches=1)
  rows = metric_rows(tmp_path)
  samples = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
  first = [s for s in samples if s["iteration"] == 1]
  assert first[0]["prompt"] == first[1]["prompt"] != first[2]["prompt"] == first[3]["prompt"]  # K = 2, adjacent
  r0, r1 = first[0]["raw_reward"], first[1]["raw_reward"]  # no shaping: reward = raw reward
  assert rows[0]["advantage_0"] == pytest.approx(r0 - r1, abs=1e-6)
  assert rows[0]["advantage_1"] == pytest.approx(r1 - r0, abs=1e-6)
  assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["policy_loss"]) for r in rows)
  state = Checkpointer(str(tmp_path / "checkpoints")).manager.restore(2)
  assert set(state["params"]) == {rl.POLICY}  # a value-free estimator trains the policy alone
  assert summary["compilations"] == {"sampler_prefill": 1, "sampler_decode": 1, "rollout_targets": 1, "update_step": 1}
  assert summary["method"] == "leave-one-out"  # the report's column, from the estimator itself
