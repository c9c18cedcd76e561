"""Pure advantage estimators and the PPO clipped policy loss (alternatives to REINFORCE).

Every function takes and returns arrays (jax or numpy), computes in float32 and is
jit-compatible. Shapes: B = batch, T = response tokens, K = responses per prompt. A token mask
[B, T] is 1 on response tokens up to and including the last valid one (EOS) and 0 after it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _num_samples(rewards: Array, minimum: int, name: str) -> int:
  if rewards.ndim != 2:
    raise ValueError(f"{name}: rewards must be [B, K], got shape {rewards.shape}")
  k = rewards.shape[-1]
  if k < minimum:
    raise ValueError(f"{name}: needs K >= {minimum} samples per prompt, got K = {k}")
  return k


def rloo_advantages(rewards: Array) -> Array:
  """REINFORCE leave-one-out advantages: [B, K] -> [B, K] float32.

  rewards: [B, K], K >= 2 sampled responses per prompt. Each sample's advantage is its reward
  minus the mean reward of the other K - 1 samples of the same prompt, i.e.
  (K r_i - sum_j r_j) / (K - 1).
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  k = _num_samples(rewards, 2, "rloo_advantages")
  others_mean = (jnp.sum(rewards, axis=-1, keepdims=True) - rewards) / np.float32(k - 1)
  return rewards - others_mean


def grpo_advantages(rewards: Array, normalize_std: bool = True, eps: float = 1e-6) -> Array:
  """Group-relative (GRPO) advantages: [B, K] -> [B, K] float32.

  rewards: [B, K] rewards of K responses per prompt. Returns (r - mean_K r) / (std_K r + eps)
  with the sample standard deviation (ddof=1, so K >= 2) when normalize_std, and r - mean_K r
  (Dr. GRPO) otherwise. normalize_std must be a Python bool (it is static under jit).
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  k = _num_samples(rewards, 2 if normalize_std else 1, "grpo_advantages")
  centered = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
  if not normalize_std:
    return centered
  std = jnp.sqrt(jnp.sum(jnp.square(centered), axis=-1, keepdims=True) / np.float32(k - 1))
  return centered / (std + jnp.float32(eps))


def gae_advantages(rewards: Array, values: Array, mask: Array, gamma: float, lam: float) -> tuple[Array, Array]:
  """Generalized advantage estimation (Schulman et al. 2016): -> (advantages, returns), both [B, T] float32.

  rewards, values: [B, T] per-token rewards and value estimates; mask: [B, T], 1 up to and
  including the last valid token, 0 after (rewards and values at masked positions are
  ignored). With V = 0 past the last valid token:
    delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lam A_{t+1},   returns = A + V.
  Both outputs are 0 where mask is 0. Computed with a lax.scan over the reversed time axis.
  """
  mask = jnp.asarray(mask).astype(jnp.float32)
  rewards = jnp.asarray(rewards, jnp.float32) * mask
  values = jnp.asarray(values, jnp.float32) * mask
  gamma = jnp.asarray(gamma, jnp.float32)
  discount = gamma * jnp.asarray(lam, jnp.float32)

  def step(carry, xs):
    next_value, next_adv = carry
    r_t, v_t, m_t = xs
    delta = r_t + gamma * next_value - v_t
    adv = (delta + discount * next_adv) * m_t
    return (v_t, adv), adv

  zeros = jnp.zeros(rewards.shape[:1], jnp.float32)
  xs = (rewards.T, values.T, mask.T)  # time-major [T, B]
  _, adv = jax.lax.scan(step, (zeros, zeros), xs, reverse=True)
  advantages = adv.T
  return advantages, (advantages + values) * mask


def ppo_policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, clip_eps: float) -> Array:
  """PPO clipped surrogate policy loss -> scalar float32.

  logp, old_logp, advantages, mask: [B, T]. With ratio = exp(logp - old_logp), the sum over
  valid tokens of max(-A ratio, -A clip(ratio, 1 - clip_eps, 1 + clip_eps)), divided by
  max(number of valid tokens, 1). Masked tokens contribute neither value nor gradient, even
  if their log-probabilities are not finite.
  """
  valid = jnp.asarray(mask).astype(jnp.bool_)
  log_ratio = jnp.where(valid, jnp.asarray(logp, jnp.float32) - jnp.asarray(old_logp, jnp.float32), 0.0)
  ratio = jnp.exp(log_ratio)
  advantages = jnp.where(valid, jnp.asarray(advantages, jnp.float32), 0.0)
  clip_eps = jnp.asarray(clip_eps, jnp.float32)
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  per_token = jnp.maximum(-advantages * ratio, -advantages * clipped)
  count = jnp.sum(valid.astype(jnp.float32))
  return jnp.sum(jnp.where(valid, per_token, 0.0)) / jnp.maximum(count, 1.0)


def clip_fraction(logp: Array, old_logp: Array, mask: Array, clip_eps: float) -> Array:
  """The fraction of valid tokens whose ratio exp(logp - old_logp) lies outside
  [1 - clip_eps, 1 + clip_eps] -> scalar float32 (0 with no valid token): how much of
  ppo_policy_loss's batch the clip holds back."""
  valid = jnp.asarray(mask).astype(jnp.bool_)
  ratio = jnp.exp(jnp.where(valid, jnp.asarray(logp, jnp.float32) - jnp.asarray(old_logp, jnp.float32), 0.0))
  outside = valid & (jnp.abs(ratio - 1.0) > jnp.asarray(clip_eps, jnp.float32))
  return jnp.sum(outside.astype(jnp.float32)) / jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)
