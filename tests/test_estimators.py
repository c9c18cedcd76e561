"""RLOO, GRPO (Dr. GRPO) and PPO beside REINFORCE: their targets and losses against numpy on
random rollouts (empty and one-token responses, flat groups, K = 2), the estimators' jitted
passes on a tiny model, and each one raising a toy reward over the shared rollout loop."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sft_helpers import tiny_model
from test_alignment_math import _np_gae as np_gae
from test_alignment_math import _np_ppo as np_ppo
from test_rl import metric_rows, toy_run

from rlaif_jax import models, rl
from rlaif_jax.checkpoints import Checkpointer


def rollouts(seed, groups, k, t=9):
  """Random rewards [B K], log-probs [B K, T] and a ragged mask with an empty response, a
  one-token response and a full one; the first group's rewards are all equal."""
  rng = np.random.default_rng(seed)
  n = groups * k
  lengths = rng.integers(0, t + 1, size=n)
  lengths[:3] = [t, 1, 0] if n > 3 else [t, 1, 0][:n]
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
  reward = rng.normal(size=n).astype(np.float32)
  reward[:k] = 0.7  # one flat group
  logp, ref_logp, old_logp = (-np.abs(rng.normal(size=(n, t))).astype(np.float32) for _ in range(3))
  return reward, logp, ref_logp, old_logp, mask


def np_sequence_reward(reward, logp, ref_logp, mask, kl_coef):
  return np.array(
    [(1 - kl_coef) * r - kl_coef * sum((lp - rf)[m > 0]) for r, lp, rf, m in zip(reward, logp, ref_logp, mask)]
  )


def np_kl_token_rewards(reward, logp, ref_logp, mask, kl_coef):
  """One token at a time: -alpha (logp - ref_logp) on each valid token, (1 - alpha) R added on
  the last one, nothing on an empty response."""
  out = np.zeros(mask.shape)
  for i in range(len(mask)):
    valid = np.flatnonzero(mask[i])
    for j in valid:
      out[i, j] = -kl_coef[i] * (logp[i, j] - ref_logp[i, j])
    if len(valid):
      out[i, valid[-1]] += (1 - kl_coef[i]) * reward[i]
  return out


def np_clipped_value_loss(values, old_values, returns, mask, clip):
  """Per valid token max((V - G)^2, (old + clip(V - old) - G)^2), averaged over valid tokens."""
  terms = []
  for i, j in zip(*np.nonzero(mask)):
    v, old, g = float(values[i, j]), float(old_values[i, j]), float(returns[i, j])
    held = v if clip is None else old + min(max(v - old, -clip), clip)
    terms.append(max((v - g) ** 2, (held - g) ** 2))
  return sum(terms) / max(len(terms), 1)


def np_rloo(sequence_reward, k):
  out = []
  for i, r in enumerate(sequence_reward):
    group = sequence_reward[i // k * k : i // k * k + k]
    out.append(r - (group.sum() - r) / (k - 1))
  return np.array(out)


def np_grpo(sequence_reward, k, dr_grpo):
  out = []
  for i, r in enumerate(sequence_reward):
    group = sequence_reward[i // k * k : i // k * k + k]
    out.append((r - group.mean()) if dr_grpo else (r - group.mean()) / (group.std(ddof=1) + 1e-6))
  return np.array(out)


def np_grpo_loss(logp, old_logp, ref_logp, adv, mask, kl_coef, clip_eps, dr_grpo):
  rows = []
  for i in range(len(mask)):
    terms = []
    for j in np.flatnonzero(mask[i]):
      ratio = np.exp(logp[i, j] - old_logp[i, j])
      surrogate = max(-adv[i, j] * ratio, -adv[i, j] * np.clip(ratio, 1 - clip_eps, 1 + clip_eps))
      d = ref_logp[i, j] - logp[i, j]
      terms.append(surrogate + kl_coef[i] * (np.exp(d) - d - 1))
    rows.append(sum(terms) / (mask.shape[1] if dr_grpo else max(len(terms), 1)))
  return np.mean(rows)


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (2, 4)])
def test_rloo_targets_and_loss_match_numpy(seed, k):
  reward, logp, ref_logp, _, mask = rollouts(seed, 3, k)
  alpha = 0.1
  sequence_reward, adv = jax.jit(rl.rloo_targets, static_argnums=5)(reward, logp, ref_logp, mask, alpha, k)
  want_reward = np_sequence_reward(reward, logp, ref_logp, mask, alpha)
  np.testing.assert_allclose(np.asarray(sequence_reward), want_reward, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(adv), np_rloo(want_reward, k), rtol=1e-5, atol=1e-5)
  # The sequence reward is REINFORCE's return at a response's first token: one objective for both.
  returns, _ = rl.reinforce_targets(reward, logp, ref_logp, np.zeros_like(logp), mask, alpha)
  has_tokens = mask[:, 0] > 0
  np.testing.assert_allclose(np.asarray(returns)[has_tokens, 0], want_reward[has_tokens], rtol=1e-5, atol=1e-5)
  # A flat group (and no KL) has advantage 0; K = 2 is r_i - r_other.
  _, flat = rl.rloo_targets(reward, ref_logp, ref_logp, mask, alpha, k)
  np.testing.assert_allclose(np.asarray(flat)[:k], 0.0, atol=1e-6)
  loss = float(rl.rloo_loss(logp, adv, mask))
  np.testing.assert_allclose(loss, -np.mean(np.asarray(adv) * (logp * mask).sum(-1)), rtol=1e-5)
  # d loss / d logp_it = -A_i / (B K) on valid tokens, 0 elsewhere (the empty row included).
  grad = np.asarray(jax.grad(rl.rloo_loss)(jnp.asarray(logp), adv, mask))
  np.testing.assert_allclose(grad, -np.asarray(adv)[:, None] * mask / len(mask), rtol=1e-5, atol=1e-7)
  assert not np.any(grad[2]) and np.count_nonzero(grad[1]) == 1


def test_rloo_hand_case_k2():
  # Two responses, alpha 0: advantages are +-(r_0 - r_1); the loss is -mean(A_i * sum_t logp_it).
  seq, adv = rl.rloo_targets(np.array([1.0, 0.25]), np.zeros((2, 2)), np.zeros((2, 2)), np.ones((2, 2)), 0.0, 2)
  np.testing.assert_allclose(np.asarray(adv), [0.75, -0.75])
  logp = np.array([[-1.0, -2.0], [-0.5, 0.0]])
  np.testing.assert_allclose(float(rl.rloo_loss(logp, adv, np.array([[1, 1], [1, 0]]))), -(0.75 * -3 - 0.75 * -0.5) / 2)


@pytest.mark.parametrize("dr_grpo", [False, True], ids=["grpo", "dr_grpo"])
@pytest.mark.parametrize("kl_in_reward", [False, True], ids=["kl_loss", "kl_reward"])
@pytest.mark.parametrize("seed,k", [(0, 2), (3, 4)])
def test_grpo_targets_and_loss_match_numpy(seed, k, kl_in_reward, dr_grpo):
  reward, logp, ref_logp, old_logp, mask = rollouts(seed, 3, k)
  alpha, clip_eps = 0.1, 0.2
  targets = jax.jit(rl.grpo_targets, static_argnums=(5, 6, 7))
  sequence_reward, adv = targets(reward, old_logp, ref_logp, mask, alpha, k, kl_in_reward, dr_grpo)
  want_reward = np_sequence_reward(reward, old_logp, ref_logp, mask, alpha) if kl_in_reward else reward
  np.testing.assert_allclose(np.asarray(sequence_reward), want_reward, rtol=1e-5, atol=1e-5)
  want_adv = np_grpo(want_reward, k, dr_grpo)[:, None] * mask
  np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-4, atol=1e-5)
  if not kl_in_reward:
    assert not np.any(np.asarray(adv)[:k])  # a flat group teaches nothing
  beta = np.full(len(mask), 0.0 if kl_in_reward else alpha, np.float32)
  loss_fn = jax.jit(rl.grpo_loss, static_argnums=7)
  loss, metrics = loss_fn(logp, old_logp, ref_logp, adv, mask, beta, clip_eps, dr_grpo)
  want = np_grpo_loss(logp, old_logp, ref_logp, np.asarray(adv), mask, beta, clip_eps, dr_grpo)
  np.testing.assert_allclose(float(loss), want, rtol=1e-4, atol=1e-6)
  want_k3 = np_grpo_loss(logp, logp, ref_logp, np.zeros_like(logp), mask, np.ones(len(mask)), clip_eps, dr_grpo)
  np.testing.assert_allclose(float(metrics["k3_kl"]), want_k3, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dr_grpo", [False, True], ids=["grpo", "dr_grpo"])
def test_grpo_gradient_at_the_rollout_policy_is_the_length_weighted_policy_gradient(dr_grpo):
  """With logp = old_logp and no KL term, d loss / d logp_it = -A_i / (B |y_i|) (GRPO) or
  -A_i / (B T) (Dr. GRPO) on valid tokens: the clip is inactive at ratio 1."""
  reward, logp, ref_logp, _, mask = rollouts(5, 2, 4)
  _, adv = rl.grpo_targets(reward, logp, ref_logp, mask, 0.0, 4, False, dr_grpo)
  loss = lambda lp: rl.grpo_loss(lp, logp, ref_logp, adv, mask, 0.0, 0.2, dr_grpo)[0]  # noqa: E731
  grad = np.asarray(jax.grad(loss)(jnp.asarray(logp)))
  length = mask.shape[1] if dr_grpo else np.maximum(mask.sum(-1, keepdims=True), 1)
  np.testing.assert_allclose(grad, -np.asarray(adv) / (len(mask) * length), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_token_rewards_match_numpy_and_make_reinforce_a_special_case_of_gae(seed):
  reward, logp, ref_logp, values, mask = rollouts(seed, 8, 1)
  per_row = np.random.default_rng(seed).uniform(0, 0.5, len(mask)).astype(np.float32)
  for kl_coef, alpha in ((0.1, np.full(len(mask), 0.1)), (per_row, per_row)):  # a scalar, or one per row
    rewards = np.asarray(jax.jit(rl.kl_token_rewards)(reward, logp, ref_logp, mask, kl_coef))
    np.testing.assert_allclose(rewards, np_kl_token_rewards(reward, logp, ref_logp, mask, alpha), rtol=1e-5, atol=1e-6)
    assert not np.any(rewards[mask == 0]) and not np.any(rewards[2])  # row 2 is an empty response
    # A response's rewards sum to its KL-shaped sequence reward (RLOO's, GRPO's with kl_in_reward).
    sequence_reward = (1 - alpha) * reward - alpha * ((logp - ref_logp) * mask).sum(-1)
    has_tokens = mask.sum(-1) > 0
    np.testing.assert_allclose(rewards.sum(-1)[has_tokens], sequence_reward[has_tokens], rtol=1e-5, atol=1e-5)
    # REINFORCE's returns and advantages are GAE's with gamma = lambda = 1 over these rewards.
    returns, advantages = rl.reinforce_targets(reward, logp, ref_logp, values, mask, kl_coef)
    gae_advantages, gae_returns = rl.gae_advantages(rewards, values, mask, 1.0, 1.0)
    np.testing.assert_allclose(np.asarray(gae_advantages), np.asarray(advantages), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gae_returns), np.asarray(returns), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clip", [0.2, None], ids=["clipped", "unclipped"])
@pytest.mark.parametrize("seed", [0, 1])
def test_clipped_value_loss_matches_numpy(seed, clip):
  _, values, old_values, returns, mask = rollouts(seed, 8, 1)
  old_values = old_values + 0.5  # far enough from the values that the clip acts on most tokens
  loss_fn = functools.partial(rl.clipped_value_loss, clip=clip)
  loss = float(jax.jit(loss_fn)(values, old_values, returns, mask))
  np.testing.assert_allclose(loss, np_clipped_value_loss(values, old_values, returns, mask, clip), rtol=1e-5)
  plain = float(rl.value_loss(values, returns, mask))
  valid = mask > 0
  held = np.clip(values - old_values, -0.2, 0.2) + old_values
  held_wins = valid & (np.abs(values - old_values) > 0.2) & ((held - returns) ** 2 > (values - returns) ** 2)
  if clip is None:
    assert loss == plain
  else:
    assert held_wins.any() and loss > plain + 1e-3
  # The gradient is the squared error's, 2 (V - G) / n, except where the held value's error wins:
  # there V has moved past the clip and the loss stops pulling it.
  grad = np.asarray(jax.grad(loss_fn)(jnp.asarray(values), old_values, returns, mask))
  pulls = valid if clip is None else valid & ~held_wins
  want = np.where(pulls, 2 * (values - returns) / valid.sum(), 0.0)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)


def test_k3_is_a_nonnegative_kl_estimate():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2000, 5)) * 2
  p, q = (np.exp(x) / np.exp(x).sum(-1, keepdims=True) for x in (logits, logits + rng.normal(size=(1, 5))))
  samples = np.array([rng.choice(5, p=row) for row in p])  # y ~ pi
  rows = np.arange(len(p))
  k3 = np.asarray(rl.k3_kl(np.log(p[rows, samples]), np.log(q[rows, samples])))
  assert np.all(k3 >= 0) and float(rl.k3_kl(np.float32(-1.0), np.float32(-1.0))) == 0.0
  np.testing.assert_allclose(k3.mean(), (p * np.log(p / q)).sum(-1).mean(), rtol=0.1)  # unbiased


def test_estimators_need_two_samples_per_prompt():
  for build, name in ((rl.Rloo.build, "Rloo"), (rl.Grpo.build, "Grpo")):
    with pytest.raises(ValueError, match=f"{name}.samples_per_prompt=1: needs K >= 2"):
      build(tiny_model(), 8, samples_per_prompt=1)


def model_batch(k=2, groups=2, p=6, n=5):
  rng = np.random.default_rng(7)
  rows = k * groups
  tokens = rng.integers(2, 200, size=(rows, p + n)).astype(np.int32)
  response_mask = (np.arange(n)[None] < np.array([n, 1, 3, 0][:rows])[:, None]).astype(np.int32)
  input_mask = np.concatenate([np.ones((rows, p), bool), response_mask.astype(bool)], axis=1)
  reward = rng.normal(size=rows).astype(np.float32)
  return {"tokens": tokens, "input_mask": input_mask, "response_mask": response_mask, "reward": reward}


def model_log_probs(model, params, ref, batch, p):
  """The trained policy's and the reference's log-probs of a batch's responses and its
  response mask, numpy [B, N] each."""
  logp, _ = rl.policy_token_stats(model, params[rl.POLICY], batch["tokens"], batch["input_mask"], p)
  ref_logp, _ = rl.policy_token_stats(model, ref, batch["tokens"], batch["input_mask"], p)
  return np.asarray(logp), np.asarray(ref_logp), batch["response_mask"].astype(np.float32)


@pytest.mark.parametrize("name", ["rloo", "grpo", "dr_grpo"])
def test_estimator_targets_and_loss_on_a_tiny_model(name):
  """The estimators' jitted passes put the pure functions together on a model's log-probs."""
  model, p = tiny_model(), 6
  est = {
    "rloo": rl.Rloo.build(model, p, samples_per_prompt=2),
    "grpo": rl.Grpo.build(model, p, samples_per_prompt=2),
    "dr_grpo": rl.Grpo.build(model, p, samples_per_prompt=2, dr_grpo=True),
  }[name]
  ref = models.init_params(model, jax.random.PRNGKey(0))
  params = est.initial_params(models.init_params(model, jax.random.PRNGKey(1)), None)
  assert set(params) == {rl.POLICY}
  batch = model_batch()
  targets, metrics = jax.jit(est.targets)(params, ref, batch, np.float32(0.1))
  logp, ref_logp, mask = model_log_probs(model, params, ref, batch, p)
  np.testing.assert_allclose(np.asarray(targets["old_logp"]), logp, rtol=1e-5, atol=1e-5)
  seq_kl = ((logp - ref_logp) * mask).sum(-1)
  np.testing.assert_allclose(float(metrics["kl"]), seq_kl.mean(), rtol=1e-4, atol=1e-5)
  if name == "rloo":  # KL-shaped reward, leave-one-out, whitened over the responses with tokens
    adv = np_rloo(np_sequence_reward(batch["reward"], logp, ref_logp, mask, 0.1), 2)
    has = mask.sum(-1) > 0
    want = np.where(has, (adv - adv[has].mean()) / adv[has].std(), 0.0)
    np.testing.assert_allclose(np.asarray(targets["advantages"]), want, rtol=1e-3, atol=1e-4)
  else:  # the scorer's reward normalized per group; the KL coefficient travels to the loss per row
    want = np_grpo(batch["reward"], 2, name == "dr_grpo")[:, None] * mask
    np.testing.assert_allclose(np.asarray(targets["advantages"]), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(targets["kl_coef"]), 0.1)
  batch = batch | {key: np.asarray(v) for key, v in targets.items()}
  loss, step_metrics = jax.jit(est.loss_fn)(params, batch, None)
  if name == "rloo":
    want_loss = -np.mean(np.asarray(targets["advantages"]) * (logp * mask).sum(-1))
  else:
    adv = np.asarray(targets["advantages"])
    want_loss = np_grpo_loss(logp, logp, ref_logp, adv, mask, np.full(4, 0.1), 0.2, name == "dr_grpo")
    assert float(step_metrics["clip_fraction"]) == 0.0
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-4, atol=1e-5)
  assert float(step_metrics["weight"]) == 4 and abs(float(step_metrics["kl_to_rollout_policy"])) < 1e-5


def test_ppo_targets_and_loss_on_a_tiny_model():
  """PPO's jitted passes: GAE over the KL-penalized token rewards and the value model's values
  (whitened, or not); at the first step over the batch (ratio 1, V = the rollout's V) the loss
  is the clipped-ratio policy loss plus value_coef times the plain squared error."""
  model, p, alpha, coef = tiny_model(), 6, 0.1, 0.5
  est = rl.Ppo.build(model, p, rl.RLConfig(whiten_advantages=False, value_coef=coef), gamma=0.9, lam=0.8)
  ref = models.init_params(model, jax.random.PRNGKey(0))
  params = est.initial_params(models.init_params(model, jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
  assert set(params) == {rl.POLICY, rl.VALUE}
  kernel = params[rl.VALUE]["score_kernel"]  # the fresh head is zero: values of 0 would hide a mix-up
  params[rl.VALUE]["score_kernel"] = jax.random.normal(jax.random.PRNGKey(3), kernel.shape, kernel.dtype)
  batch = model_batch()
  targets, metrics = jax.jit(est.targets)(params, ref, batch, np.float32(alpha))
  logp, ref_logp, mask = model_log_probs(model, params, ref, batch, p)
  values = np.asarray(rl.token_values(est.value, params[rl.VALUE], batch["tokens"], batch["input_mask"], p))
  rewards = np_kl_token_rewards(batch["reward"], logp, ref_logp, mask, np.full(len(mask), alpha))
  adv, returns = np_gae(rewards, values, mask, 0.9, 0.8)
  np.testing.assert_allclose(np.asarray(targets["advantages"]), adv, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(targets["returns"]), returns, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(targets["old_values"]), values, rtol=1e-5, atol=1e-6)
  valid = mask > 0
  ev = 1 - np.var((returns - values)[valid]) / np.var(returns[valid])
  np.testing.assert_allclose(float(metrics["explained_variance"]), ev, rtol=1e-4, atol=1e-5)
  whitened, _ = jax.jit(dataclasses.replace(est, config=rl.RLConfig()).targets)(params, ref, batch, np.float32(alpha))
  want = np.where(valid, (adv - adv[valid].mean()) / adv[valid].std(), 0.0)
  np.testing.assert_allclose(np.asarray(whitened["advantages"]), want, rtol=1e-3, atol=1e-4)
  batch = batch | {key: np.asarray(v) for key, v in targets.items()}
  loss, step_metrics = jax.jit(est.loss_fn)(params, batch, None)
  value_loss = np.mean((values - returns)[valid] ** 2)
  np.testing.assert_allclose(float(loss), np_ppo(logp, logp, adv, mask, 0.2) + coef * value_loss, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(step_metrics["value_loss"]), value_loss, rtol=1e-4, atol=1e-6)
  assert float(step_metrics["clip_fraction"]) == 0.0 and float(step_metrics["weight"]) == mask.sum() == 9


ESTIMATORS = {  # the estimator and its toy_run settings: 16 rows an iteration each, as REINFORCE's toy run
  "rloo": (functools.partial(rl.Rloo.build, samples_per_prompt=4), {"batch_size": 4}),
  "grpo": (functools.partial(rl.Grpo.build, samples_per_prompt=4), {"batch_size": 4}),
  # Dr. GRPO's advantages keep the reward's scale (no division by the group's std, about 0.15
  # here), so at GRPO's lr its steps are several times smaller: 0.20 -> 0.39 in 20 iterations.
  "dr_grpo": (functools.partial(rl.Grpo.build, samples_per_prompt=4, dr_grpo=True), {"batch_size": 4, "lr": 1e-2}),
  # One response per prompt. The ratio clip holds back toy_run's 4 updates per batch: at its lr of
  # 3e-3 PPO climbed 0.20 -> 0.42 in 20 iterations (unclipped, as REINFORCE: 0.83); at 6e-3, 0.83.
  "ppo": (rl.Ppo.build, {"batch_size": 16, "lr": 6e-3}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimator_raises_a_toy_reward(tmp_path, name):
  """16 responses per iteration (4 prompts x K = 4, or PPO's 16 prompts x 1, as REINFORCE): the
  lowercase fraction climbs by more than 0.25 within 20 iterations, and nothing recompiles."""
  build, settings = ESTIMATORS[name]
  summary = toy_run(tmp_path, 20, estimator=build, **settings)
  rows = metric_rows(tmp_path)
  start, late = rows[0]["reward_raw_mean"], np.mean([r["reward_raw_mean"] for r in rows[-5:]])
  print(f"{name}: reward {start:.3f} -> {late:.3f} (last {rows[-1]['reward_raw_mean']:.3f})")
  assert late > start + 0.25, (start, late)  # from about 0.2 toward 1
  with_value = name == "ppo"  # the value-free estimators log no value loss and train the policy alone
  assert all(np.isfinite(r["kl"]) for r in rows) and ("value_loss" in rows[-1]) == with_value
  assert summary["compilations"] == {"sampler_prefill": 1, "sampler_decode": 1, "rollout_targets": 1, "update_step": 1}
  samples = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
  first = [s["prompt"] for s in samples if s["iteration"] == 1]
  if not with_value:
    assert len(set(first[:4])) == 1  # the K responses of a prompt are adjacent rows
  state = Checkpointer(str(tmp_path / "checkpoints")).manager.restore(80)  # 20 iterations x 2 epochs x 2 minibatches
  assert set(state["params"]) == ({rl.POLICY, rl.VALUE} if with_value else {rl.POLICY})


def test_every_estimator_follows_the_protocol_the_loop_and_stage_read():
  """Each estimator the package exports is an rl.Estimator that defines what the protocol only
  declares (the loop and the rl stage read these attributes, never probe for them), and names its
  method as the reports do."""
  policy = tiny_model()
  pairwise = rl.RLConfig(reward_normalization="none", reward_clip=None, missing_eos_penalty=0.0, target_kl=None)
  built = {
    "RL": rl.Reinforce.build(policy, 4),
    "PPO": rl.Ppo.build(policy, 4),
    "RLOO": rl.Rloo.build(policy, 4),
    "GRPO": rl.Grpo.build(policy, 4),
    "Dr. GRPO": rl.Grpo.build(policy, 4, dr_grpo=True),
    "OAIF (IPO)": rl.OnlineDpo.build(policy, 4, pairwise, loss="ipo"),
  }
  exported = {cls for name in rl.__all__ if isinstance(cls := getattr(rl, name), type) and hasattr(cls, "build")}
  assert exported == {type(e) for e in built.values()}
  declared = ("init_params", "initial_params", "optimizer", "targets", "loss_fn")
  for method, estimator in built.items():
    assert rl.Estimator in type(estimator).__mro__ and estimator.method == method
    assert all(getattr(type(estimator), name) is not getattr(rl.Estimator, name) for name in declared), method
    assert isinstance(estimator.samples_per_prompt, int) and estimator.progress_metric
  assert built["OAIF (IPO)"].minibatch_by_prompt and not built["RLOO"].minibatch_by_prompt
