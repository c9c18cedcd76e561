"""RLOO, GRPO, GAE, PPO and soft DPO / IPO against independent numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlaif_jax import losses
from rlaif_jax.rl import advantages as adv

RTOL = ATOL = 1e-5
SEEDS = (0, 1, 2)


def _close(actual, expected, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol)


def _random_mask(rng, b, t):
  """Prefix masks of varying lengths; row 0 is all zero and row 1 is all one."""
  lengths = rng.integers(0, t + 1, size=b)
  lengths[0], lengths[1] = 0, t
  return (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)


# --- numpy references (float64, explicit loops) ---


def _np_rloo(r):
  r = np.asarray(r, np.float64)
  out = np.zeros_like(r)
  for b in range(r.shape[0]):
    for i in range(r.shape[1]):
      others = [r[b, j] for j in range(r.shape[1]) if j != i]
      out[b, i] = r[b, i] - sum(others) / len(others)
  return out


def _np_grpo(r, normalize_std=True, eps=1e-6):
  r = np.asarray(r, np.float64)
  out = np.zeros_like(r)
  for b in range(r.shape[0]):
    row = r[b]
    mean = row.sum() / len(row)
    if normalize_std:
      std = np.sqrt(sum((x - mean) ** 2 for x in row) / (len(row) - 1))
      out[b] = (row - mean) / (std + eps)
    else:
      out[b] = row - mean
  return out


def _np_gae(rewards, values, mask, gamma, lam):
  b_size, t_size = rewards.shape
  advantages = np.zeros((b_size, t_size))
  returns = np.zeros((b_size, t_size))
  for b in range(b_size):
    n = int(mask[b].sum())  # prefix mask: tokens 0..n-1 are valid
    last_adv = 0.0
    for t in reversed(range(n)):
      next_value = float(values[b, t + 1]) if t + 1 < n else 0.0
      delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
      last_adv = delta + gamma * lam * last_adv
      advantages[b, t] = last_adv
      returns[b, t] = last_adv + float(values[b, t])
  return advantages, returns


def _np_ppo(logp, old_logp, a, mask, clip_eps):
  total, count = 0.0, 0
  for b in range(logp.shape[0]):
    for t in range(logp.shape[1]):
      if mask[b, t]:
        ratio = np.exp(float(logp[b, t]) - float(old_logp[b, t]))
        clipped = min(max(ratio, 1 - clip_eps), 1 + clip_eps)
        total += max(-a[b, t] * ratio, -a[b, t] * clipped)
        count += 1
  return total / max(count, 1)


def _np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def _np_soft_dpo(la, lb, ra, rb, p, beta):
  terms = []
  for i in range(len(la)):
    d = beta * ((float(la[i]) - float(ra[i])) - (float(lb[i]) - float(rb[i])))
    terms.append(-(p[i] * _np_log_sigmoid(d) + (1 - p[i]) * _np_log_sigmoid(-d)))
  return np.mean(terms)


def _np_soft_ipo(la, lb, ra, rb, p, beta):
  terms = []
  for i in range(len(la)):
    h = (float(la[i]) - float(ra[i])) - (float(lb[i]) - float(rb[i]))
    terms.append((h - (2 * float(p[i]) - 1) / (2 * beta)) ** 2)
  return np.mean(terms)


def _pair_inputs(seed, b=33, scale=2.0):
  rng = np.random.default_rng(seed)
  la, lb, ra, rb = (rng.normal(size=(4, b)) * scale - 20.0).astype(np.float32)
  p = rng.random(b).astype(np.float32)
  p[:3] = [0.0, 1.0, 0.5]
  return la, lb, ra, rb, p


# --- RLOO ---


def test_rloo_hand_case():
  _close(adv.rloo_advantages(np.array([[1.0, 2.0, 3.0]], np.float32)), [[-1.5, 0.0, 1.5]])
  _close(adv.rloo_advantages(np.array([[4.0, -2.0]], np.float32)), [[6.0, -6.0]])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 3, 8])
def test_rloo_matches_numpy(seed, k):
  r = (np.random.default_rng(seed).normal(size=(5, k)) * 3).astype(np.float32)
  out = adv.rloo_advantages(r)
  assert out.shape == (5, k) and out.dtype == jnp.float32
  _close(out, _np_rloo(r))


def test_rloo_rejects_single_sample():
  with pytest.raises(ValueError):
    adv.rloo_advantages(np.zeros((3, 1), np.float32))


# --- GRPO ---


def test_grpo_hand_case():
  r = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]], np.float32)
  # row 0: mean 2, sample std 1; row 1: constant, so 0 (eps keeps it finite)
  _close(adv.grpo_advantages(r), [[-1 / (1 + 1e-6), 0.0, 1 / (1 + 1e-6)], [0.0, 0.0, 0.0]])
  _close(adv.grpo_advantages(r, normalize_std=False), [[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])


def test_grpo_two_samples_hand_case():
  # mean 1, sample std sqrt(2): advantages -+1 / (sqrt 2 + eps)
  out = adv.grpo_advantages(np.array([[0.0, 2.0]], np.float32), eps=0.5)
  _close(out, [[-1 / (np.sqrt(2) + 0.5), 1 / (np.sqrt(2) + 0.5)]])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("normalize_std", [True, False])
def test_grpo_matches_numpy(seed, normalize_std):
  r = (np.random.default_rng(seed).normal(size=(6, 4)) * 2 + 1).astype(np.float32)
  out = adv.grpo_advantages(r, normalize_std=normalize_std)
  assert out.shape == (6, 4) and out.dtype == jnp.float32
  _close(out, _np_grpo(r, normalize_std=normalize_std))
  _close(adv.grpo_advantages(r, normalize_std, 1e-2), _np_grpo(r, normalize_std, 1e-2))


# --- GAE ---


def test_gae_hand_case():
  rewards = np.array([[1.0, 0.0, 2.0]], np.float32)
  values = np.array([[0.5, 1.0, 1.0]], np.float32)
  mask = np.array([[1.0, 1.0, 0.0]], np.float32)
  # delta_1 = 0 + 0.5 * 0 - 1 = -1; delta_0 = 1 + 0.5 * 1 - 0.5 = 1; A_0 = 1 + 0.25 * (-1) = 0.75
  a, ret = adv.gae_advantages(rewards, values, mask, gamma=0.5, lam=0.5)
  _close(a, [[0.75, -1.0, 0.0]])
  _close(ret, [[1.25, 0.0, 0.0]])


def test_gae_gamma_lam_one_is_reward_to_go_minus_values():
  rng = np.random.default_rng(7)
  rewards = rng.normal(size=(6, 9)).astype(np.float32)
  values = rng.normal(size=(6, 9)).astype(np.float32)
  mask = _random_mask(rng, 6, 9)
  a, ret = adv.gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
  to_go = np.zeros((6, 9))
  for b in range(6):
    for t in range(9):
      if mask[b, t]:
        to_go[b, t] = sum(float(rewards[b, s]) for s in range(t, 9) if mask[b, s])
  _close(a, (to_go - values) * mask, atol=1e-5)
  _close(ret, to_go, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (1.0, 0.9), (0.8, 0.0), (0.0, 0.5)])
def test_gae_matches_numpy(seed, gamma, lam):
  rng = np.random.default_rng(seed)
  b, t = 7, 12
  rewards = rng.normal(size=(b, t)).astype(np.float32)
  values = rng.normal(size=(b, t)).astype(np.float32)
  mask = _random_mask(rng, b, t)
  # garbage past the end must be ignored
  rewards = np.where(mask > 0, rewards, 1e3).astype(np.float32)
  values = np.where(mask > 0, values, -1e3).astype(np.float32)
  a, ret = adv.gae_advantages(rewards, values, mask, gamma, lam)
  assert a.shape == ret.shape == (b, t) and a.dtype == ret.dtype == jnp.float32
  ref_a, ref_ret = _np_gae(rewards, values, mask, gamma, lam)
  _close(a, ref_a)
  _close(ret, ref_ret)
  assert np.all(np.asarray(a)[0] == 0) and np.all(np.asarray(ret)[mask == 0] == 0)


def test_gae_accepts_bool_mask():
  rng = np.random.default_rng(3)
  rewards, values = rng.normal(size=(2, 4, 5)).astype(np.float32)
  mask = _random_mask(rng, 4, 5)
  a, ret = adv.gae_advantages(rewards, values, mask.astype(bool), 0.9, 0.8)
  ref_a, ref_ret = _np_gae(rewards, values, mask, 0.9, 0.8)
  _close(a, ref_a)
  _close(ret, ref_ret)


# --- PPO ---


def test_ppo_inside_clip_is_minus_mean_ratio_times_advantage():
  rng = np.random.default_rng(11)
  old = rng.normal(size=(4, 6)).astype(np.float32) - 2
  logp = (old + rng.uniform(-0.05, 0.05, size=old.shape)).astype(np.float32)
  a = rng.normal(size=(4, 6)).astype(np.float32)
  mask = _random_mask(rng, 4, 6)
  ratio = np.exp(logp.astype(np.float64) - old)
  expected = -np.sum(a * ratio * mask) / mask.sum()
  _close(adv.ppo_policy_loss(logp, old, a, mask, clip_eps=0.2), expected)


def test_ppo_hand_case_clipping():
  # ratio 2, A=+1: max(-2, -1.2) = -1.2; ratio 0.5, A=-1: max(0.5, 0.8) = 0.8
  # ratio 2, A=-1: max(2, 1.2) = 2;     ratio 0.5, A=+1: max(-0.5, -0.8) = -0.5; the 5th is masked
  logp = np.log(np.array([[2.0, 0.5, 2.0, 0.5, 100.0]], np.float32))
  old = np.zeros_like(logp)
  a = np.array([[1.0, -1.0, -1.0, 1.0, 50.0]], np.float32)
  mask = np.array([[1, 1, 1, 1, 0]], np.float32)
  _close(adv.ppo_policy_loss(logp, old, a, mask, 0.2), (-1.2 + 0.8 + 2.0 - 0.5) / 4)


def test_ppo_all_masked_is_zero_and_masked_nonfinite_is_ignored():
  z = np.zeros((2, 3), np.float32)
  assert float(adv.ppo_policy_loss(z, z, np.ones_like(z), z, 0.2)) == 0.0
  logp = np.array([[-1.0, np.inf, np.nan]], np.float32)
  mask = np.array([[1.0, 0.0, 0.0]], np.float32)
  loss, g = jax.value_and_grad(adv.ppo_policy_loss)(logp, np.full_like(logp, -1.0), np.ones_like(logp), mask, 0.2)
  _close(loss, -1.0)
  assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip_eps", [0.1, 0.2])
def test_ppo_matches_numpy(seed, clip_eps):
  rng = np.random.default_rng(seed)
  b, t = 6, 10
  old = (rng.normal(size=(b, t)) - 3).astype(np.float32)
  logp = (old + rng.normal(size=(b, t)) * 0.3).astype(np.float32)
  a = rng.normal(size=(b, t)).astype(np.float32)
  mask = _random_mask(rng, b, t)
  _close(adv.ppo_policy_loss(logp, old, a, mask, clip_eps), _np_ppo(logp, old, a, mask, clip_eps))
  _close(adv.ppo_policy_loss(logp, old, a, mask.astype(bool), clip_eps), _np_ppo(logp, old, a, mask, clip_eps))


# --- soft DPO / IPO ---


def test_soft_dpo_hard_label_is_dpo():
  la, lb, ra, rb, _ = _pair_inputs(4)
  beta = 0.1
  h = (la.astype(np.float64) - ra) - (lb.astype(np.float64) - rb)
  ones = np.ones_like(la)
  _close(losses.soft_dpo_loss(la, lb, ra, rb, ones, beta), np.mean(-_np_log_sigmoid(beta * h)))
  _close(losses.soft_dpo_loss(la, lb, ra, rb, 0 * ones, beta), np.mean(-_np_log_sigmoid(-beta * h)))
  # an even split at d = 0 costs log 2
  z = np.zeros(3, np.float32)
  _close(losses.soft_dpo_loss(z, z, z, z, np.full(3, 0.5, np.float32), 1.0), np.log(2))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 1.0, 2.0])
@pytest.mark.parametrize(
  "loss, reference", [(losses.soft_dpo_loss, _np_soft_dpo), (losses.soft_ipo_loss, _np_soft_ipo)], ids=["dpo", "ipo"]
)
def test_soft_preference_losses_match_numpy(seed, beta, loss, reference):
  la, lb, ra, rb, p = _pair_inputs(seed)
  out = loss(la, lb, ra, rb, p, beta)
  assert out.shape == () and out.dtype == jnp.float32
  _close(out, reference(la, lb, ra, rb, p, beta))


def test_soft_dpo_extreme_margins_are_finite():
  la = np.array([1e4, -1e4, 0.0], np.float32)
  z = np.zeros(3, np.float32)
  p = np.array([1.0, 1.0, 0.5], np.float32)
  loss, g = jax.value_and_grad(losses.soft_dpo_loss)(la, z, z, z, p, 1.0)
  _close(loss, (0.0 + 1e4 + np.log(2)) / 3, rtol=1e-5)
  assert np.all(np.isfinite(np.asarray(g)))


def test_soft_dpo_gradient_matches_finite_differences():
  la, lb, ra, rb, p = _pair_inputs(5, b=8)
  beta = 0.3
  g = np.asarray(jax.grad(losses.soft_dpo_loss)(la, lb, ra, rb, p, beta), np.float64)
  # central differences of the float64 numpy reference
  step = 1e-4
  fd = np.zeros(len(la))
  for i in range(len(la)):
    plus, minus = la.astype(np.float64), la.astype(np.float64)
    plus[i] += step
    minus[i] -= step
    fd[i] = (_np_soft_dpo(plus, lb, ra, rb, p, beta) - _np_soft_dpo(minus, lb, ra, rb, p, beta)) / (2 * step)
  _close(g, fd, atol=1e-6)
  # and the closed form: d loss / d logp_a_i = -beta (p_i - sigmoid(d_i)) / B
  d = beta * ((la.astype(np.float64) - ra) - (lb.astype(np.float64) - rb))
  _close(g, -beta * (p - 1 / (1 + np.exp(-d))) / len(la), atol=1e-6)


def test_soft_ipo_hand_case():
  # h = (-1 - -2) - (-3 - -2.5) = 1.5; beta = 0.5: p=1 -> (1.5 - 1)^2 = 0.25, p=0.75 -> (1.5 - 0.5)^2 = 1
  la, lb = np.array([-1.0, -1.0], np.float32), np.array([-3.0, -3.0], np.float32)
  ra, rb = np.array([-2.0, -2.0], np.float32), np.array([-2.5, -2.5], np.float32)
  _close(losses.soft_ipo_loss(la, lb, ra, rb, np.array([1.0, 0.75], np.float32), 0.5), (0.25 + 1.0) / 2)
  # p = 0.5 targets h = 0: (1.5)^2
  _close(losses.soft_ipo_loss(la, lb, ra, rb, np.array([0.5, 0.5], np.float32), 0.5), 2.25)


# --- jit ---


def test_all_functions_jit():
  rng = np.random.default_rng(9)
  r = rng.normal(size=(4, 3)).astype(np.float32)
  _close(jax.jit(adv.rloo_advantages)(r), _np_rloo(r))
  _close(jax.jit(adv.grpo_advantages, static_argnames="normalize_std")(r), _np_grpo(r))
  _close(jax.jit(adv.grpo_advantages, static_argnames="normalize_std")(r, normalize_std=False), _np_grpo(r, False))

  rewards, values, logp, old, a = rng.normal(size=(5, 5, 8)).astype(np.float32)
  mask = _random_mask(rng, 5, 8)
  gae = jax.jit(adv.gae_advantages)(rewards, values, mask, 0.95, 0.9)  # gamma, lam traced
  for got, ref in zip(gae, _np_gae(rewards, values, mask, 0.95, 0.9)):
    _close(got, ref)
  _close(jax.jit(adv.ppo_policy_loss)(logp, old, a, mask, 0.2), _np_ppo(logp, old, a, mask, 0.2))

  la, lb, ra, rb, p = _pair_inputs(9)
  _close(jax.jit(losses.soft_dpo_loss)(la, lb, ra, rb, p, 0.1), _np_soft_dpo(la, lb, ra, rb, p, 0.1))
  _close(jax.jit(losses.soft_ipo_loss)(la, lb, ra, rb, p, 0.1), _np_soft_ipo(la, lb, ra, rb, p, 0.1))
