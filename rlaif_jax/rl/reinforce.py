"""RL with REINFORCE, a value baseline and a KL penalty to the SFT policy (paper section 2.2).

The math is in small pure functions (`kl_token_rewards`, `reinforce_targets`, `policy_loss`,
`value_loss`, whitening, explained variance, the adaptive KL coefficient). `Reinforce` is the
estimator the rollout loop (loop.py) runs; through `PolicyAndValue` (which PPO in ppo.py
shares) it puts them together for the two jitted functions of an iteration:

- `targets`: after sampling, one pass of the policy, the frozen SFT reference and the
  value model over the rollouts gives log-probabilities, values, entropies, and from them
  the returns and advantages (fixed for the iteration's update epochs);
- `loss_fn`: the trainer's loss over params {"policy", "value"} (one state, one optimizer
  per model through `two_optimizers`).

Sequences are [prompt (left-padded to P) | response (N tokens, right-padded)]; response
token j sits at position P + j and is predicted from position P + j - 1, where the value
model also reads V(x, y_<j).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlaif_jax import models
from rlaif_jax.checks import check_arguments
from rlaif_jax.reward import init_from_lm
from rlaif_jax.rl.estimator import Estimator

Array = jax.Array
POLICY, VALUE = "policy", "value"


def kl_token_rewards(reward, logp, ref_logp, mask, kl_coef) -> Array:
  """The per-token rewards every estimator optimizes, [B, T]: the paper's objective spread
  over a response's tokens.

  reward: [B] sequence reward R(x, y); logp, ref_logp: [B, T] (the sampled policy's and
  pi_SFT's); mask: [B, T] with 1 on response tokens up to and including EOS, 0 after.
  r_t = -kl_coef * (logp_t - ref_logp_t) on every valid token, plus (1 - kl_coef) * reward on
  the last valid token; 0 where mask is 0 (an empty response gets nothing). kl_coef: a scalar
  (or [B]).
  """
  mask = jnp.asarray(mask, jnp.float32)
  kl_coef = jnp.asarray(kl_coef, jnp.float32)
  if kl_coef.ndim == 1:
    kl_coef = kl_coef[:, None]
  t = mask.shape[-1]
  last = t - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=-1)  # [B] index of the last valid token
  terminal = jax.nn.one_hot(last, t, dtype=jnp.float32) * (jnp.sum(mask, axis=-1, keepdims=True) > 0)
  kl = (jnp.asarray(logp, jnp.float32) - jnp.asarray(ref_logp, jnp.float32)) * mask
  reward = jnp.asarray(reward, jnp.float32)[:, None]
  return -kl_coef * kl + (1.0 - kl_coef) * reward * terminal


def reinforce_targets(reward, logp, ref_logp, values, mask, kl_coef) -> tuple[Array, Array]:
  """REINFORCE returns and advantages with a KL penalty, both [B, T].

  reward: [B] sequence reward R(x, y); logp, ref_logp, values: [B, T]; mask: [B, T] with 1 on
  response tokens up to and including EOS, 0 after. The per-token rewards r_t are
  kl_token_rewards'; returns G_t = sum of r_t' over valid t' >= t (no discount);
  advantages = G_t - values_t. Both are 0 where mask is 0. kl_coef: a scalar (or [B]).
  """
  mask = jnp.asarray(mask, jnp.float32)
  rewards = kl_token_rewards(reward, logp, ref_logp, mask, kl_coef)
  returns = jnp.flip(jnp.cumsum(jnp.flip(rewards * mask, -1), axis=-1), -1) * mask
  advantages = (returns - jnp.asarray(values, jnp.float32)) * mask
  return returns, advantages


def sequence_kl(logp, ref_logp, mask) -> Array:
  """sum_t (logp_t - ref_logp_t) over each response's valid tokens: [B, T] -> [B], the
  sampled estimate of KL(pi || pi_SFT) for one sequence."""
  diff = jnp.asarray(logp, jnp.float32) - jnp.asarray(ref_logp, jnp.float32)
  return jnp.sum(diff * jnp.asarray(mask, jnp.float32), axis=-1)


def kl_shaped_reward(reward, logp, ref_logp, mask, kl_coef) -> Array:
  """The sequence reward with the KL penalty in it: (1 - kl_coef) R - kl_coef * sequence_kl, [B].

  It is the sum over a response of kl_token_rewards' per-token rewards (REINFORCE's return G
  at the first token), so an estimator that scores whole sequences optimizes the paper's objective.
  reward: [B]; logp, ref_logp, mask: [B, T]; kl_coef: a scalar (or [B]).
  """
  kl_coef = jnp.asarray(kl_coef, jnp.float32)
  return (1.0 - kl_coef) * jnp.asarray(reward, jnp.float32) - kl_coef * sequence_kl(logp, ref_logp, mask)


def masked_mean(x, mask, axis=None) -> Array:
  mask = jnp.asarray(mask, jnp.float32)
  return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def masked_var(x, mask) -> Array:
  """Variance of the valid entries of x."""
  return masked_mean(jnp.square(x - masked_mean(x, mask)), mask)


def masked_whiten(x, mask, eps: float = 1e-8) -> Array:
  """(x - mean) / std over the valid entries; 0 where mask is 0."""
  return (x - masked_mean(x, mask)) * jax.lax.rsqrt(masked_var(x, mask) + eps) * jnp.asarray(mask, jnp.float32)


def policy_loss(logp, advantages, mask) -> Array:
  """-sum_t stop_gradient(A_t) log pi(y_t | x, y_<t) / (number of valid tokens)."""
  return -masked_mean(jax.lax.stop_gradient(advantages) * logp, mask)


def value_loss(values, returns, mask) -> Array:
  """sum_t (V(x, y_<t) - G_t)^2 / (number of valid tokens); the returns are targets."""
  return masked_mean(jnp.square(values - jax.lax.stop_gradient(returns)), mask)


def explained_variance(values, returns, mask) -> Array:
  """1 - Var(G - V) / Var(G) over the valid tokens: 1 is a perfect baseline, 0 a constant one."""
  return 1.0 - masked_var(returns - values, mask) / jnp.maximum(masked_var(returns, mask), 1e-8)


def rollout_metrics(logp, ref_logp, entropy, mask) -> dict[str, Array]:
  """What every estimator logs about its rollouts: the mean sequence KL to the SFT policy
  ("kl", which the adaptive KL controller reads), the KL per token and the policy's entropy."""
  return {
    "kl": jnp.mean(sequence_kl(logp, ref_logp, mask)),
    "kl_per_token": masked_mean(logp - ref_logp, mask),
    "entropy": masked_mean(entropy, mask),
  }


def token_entropy(logits) -> Array:
  """Entropy of the softmax over the last axis, in float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n: int) -> float:
  """Proportional controller of Ziegler et al. (2019): moves coef toward the value that keeps
  the per-sequence KL near target; the error is clipped to +-20% and scaled by n / horizon."""
  error = float(np.clip(kl / target - 1.0, -0.2, 0.2))
  return float(coef * (1.0 + error * n / horizon))


@dataclasses.dataclass
class RunningMoments:
  """Mean and variance of every reward seen so far (Chan et al.'s parallel update)."""

  count: float = 0.0
  mean: float = 0.0
  m2: float = 0.0

  def update(self, x) -> None:
    x = np.asarray(x, np.float64)
    n, mean, m2 = x.size, float(x.mean()), float(((x - x.mean()) ** 2).sum())
    total = self.count + n
    delta = mean - self.mean
    self.mean += delta * n / total
    self.m2 += m2 + delta**2 * self.count * n / total
    self.count = total

  @property
  def std(self) -> float:
    return float(np.sqrt(self.m2 / max(self.count, 1.0)))


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """What users of RL libraries expect to set; defaults follow the paper where it says."""

  kl_coef: float = 0.05  # alpha; the starting value when target_kl is set
  target_kl: float | None = None  # per-sequence KL the adaptive controller aims at (None: fixed)
  kl_horizon: int = 10_000  # samples over which the controller closes its error
  missing_eos_penalty: float = 0.0  # subtracted from R when a response hits the cap without ending
  reward_normalization: str = "none"  # none | running (all rewards so far) | rm_stats (the RM's own)
  reward_clip: float | None = None  # |R| <= reward_clip after normalization
  whiten_advantages: bool = True
  update_epochs: int = 1  # passes over each rollout batch
  minibatches: int = 1  # update steps per epoch
  value_coef: float = 1.0

  def __post_init__(self):
    check_arguments("RLConfig", dataclasses.asdict(self))


def shape_rewards(raw, ended, config: RLConfig, moments: RunningMoments | None = None) -> np.ndarray:
  """R as the policy sees it: normalized with running moments (updated here with raw first)
  when config.reward_normalization == "running", clipped, minus the missing-EOS penalty."""
  r = np.asarray(raw, np.float64)
  if config.reward_normalization == "running":
    moments.update(r)
    r = (r - moments.mean) / (moments.std + 1e-8)
  if config.reward_clip is not None:
    r = np.clip(r, -config.reward_clip, config.reward_clip)
  return (r - config.missing_eos_penalty * ~np.asarray(ended, bool)).astype(np.float32)


def policy_token_stats(model, params, tokens, input_mask, prompt_len):
  """log pi(y_j | x, y_<j) and the policy's entropy at each response position: [B, N] each."""
  logp, _, entropy = models.score_tokens(model, params, tokens, input_mask, start=prompt_len)
  return logp, entropy


def update_token_stats(model, params, batch, prompt_len):
  """The pass every estimator's loss starts with: the policy's log-probs and entropy on a
  rollout batch, [B, N] each, and the response mask as float32 [B, N]."""
  logp, entropy = policy_token_stats(model, params, batch["tokens"], batch["input_mask"], prompt_len)
  return logp, entropy, batch["response_mask"].astype(jnp.float32)


def update_metrics(logp, entropy, old_logp, mask) -> dict[str, Array]:
  """What every estimator logs about an update: the policy's entropy and its KL to the policy
  that sampled the batch (0 on the first pass over it)."""
  return {"update_entropy": masked_mean(entropy, mask), "kl_to_rollout_policy": masked_mean(old_logp - logp, mask)}


def rollout_token_stats(model, params, ref_params, batch, prompt_len):
  """The rollout pass every estimator's targets start with: the sampled policy's log-probs,
  the frozen reference's log-probs and the policy's entropy, [B, N] each, and the response
  mask as float32 [B, N]. params: the policy's; ref_params: pi_SFT's."""
  logp, entropy, mask = update_token_stats(model, params, batch, prompt_len)
  ref_logp, _ = policy_token_stats(model, ref_params, batch["tokens"], batch["input_mask"], prompt_len)
  return logp, ref_logp, entropy, mask


def token_values(model, params, tokens, input_mask, prompt_len):
  """V(x, y_<j) for each response position j: [B, N]."""
  return models.token_values(model, params, tokens, input_mask, start=prompt_len)


def two_optimizers(policy: optax.GradientTransformation, value: optax.GradientTransformation):
  """One optimizer over {"policy", "value"} params that updates each with its own; its state
  is {"policy": ..., "value": ...}, so each model's moments shard like its parameters."""
  transforms = {POLICY: policy, VALUE: value}

  def init(params):
    return {k: t.init(params[k]) for k, t in transforms.items()}

  def update(updates, state, params=None):
    out = {k: t.update(updates[k], state[k], None if params is None else params[k]) for k, t in transforms.items()}
    return {k: u for k, (u, _) in out.items()}, {k: s for k, (_, s) in out.items()}

  return optax.GradientTransformation(init, update)


class PolicyAndValue(Estimator):
  """What the estimators that train a value model beside the policy share (REINFORCE, PPO):
  their parameters {"policy", "value"} and optimizer, the rollout pass of `targets` and the
  update pass of `loss_fn`. The subclass has `policy`, `value` (scalar_head=True),
  `prompt_len` and `config` fields and defines the two steps that differ:

  - `returns_and_advantages(reward, logp, ref_logp, values, mask, kl_coef)` -> a dict with
    "returns" and "advantages" ([B, N] each, before whitening) and anything else its loss
    reads from the batch;
  - `losses(logp, values, batch, mask)` -> (policy loss, value loss, extra metrics).
  """

  def init_params(self, rng) -> dict:
    """Boxed parameters of the trained models (shapes and logical axes for the trainer)."""
    r_policy, r_value = jax.random.split(rng)
    return {
      POLICY: models.init_params(self.policy, r_policy, boxed=True),
      VALUE: models.init_params(self.value, r_value, boxed=True),
    }

  def initial_params(self, ref_params, rng) -> dict:
    """The policy starts as the reference (SFT) policy, the value model as its decoder with a
    fresh scalar head."""
    return {POLICY: ref_params, VALUE: init_from_lm(self.value, ref_params, rng)}

  def optimizer(self, policy: optax.GradientTransformation, value: optax.GradientTransformation):
    return two_optimizers(policy, value)

  def targets(self, params, ref_params, batch, kl_coef):
    """Log-probs, values, returns and advantages of sampled responses, and rollout metrics."""
    p = self.prompt_len
    logp, ref_logp, entropy, mask = rollout_token_stats(self.policy, params[POLICY], ref_params, batch, p)
    values = token_values(self.value, params[VALUE], batch["tokens"], batch["input_mask"], p)
    targets = self.returns_and_advantages(batch["reward"], logp, ref_logp, values, mask, kl_coef)
    returns, raw_advantages = targets["returns"], targets["advantages"]
    if self.config.whiten_advantages:
      targets["advantages"] = masked_whiten(raw_advantages, mask)
    metrics = rollout_metrics(logp, ref_logp, entropy, mask) | {
      "value_mean": masked_mean(values, mask),
      "return_mean": masked_mean(returns, mask),
      "advantage_std": jnp.sqrt(masked_var(raw_advantages, mask)),
      "explained_variance": explained_variance(values, returns, mask),
      "rollout_value_loss": value_loss(values, returns, mask),
    }
    return {"old_logp": logp, "ref_logp": ref_logp, **targets}, metrics

  def loss_fn(self, params, batch, rng):
    del rng
    logp, entropy, mask = update_token_stats(self.policy, params[POLICY], batch, self.prompt_len)
    values = token_values(self.value, params[VALUE], batch["tokens"], batch["input_mask"], self.prompt_len)
    p_loss, v_loss, metrics = self.losses(logp, values, batch, mask)
    return p_loss + self.config.value_coef * v_loss, {
      "policy_loss": p_loss,
      "value_loss": v_loss,
      **metrics,
      **update_metrics(logp, entropy, batch["old_logp"], mask),
      "weight": jnp.sum(mask),
    }


@dataclasses.dataclass(frozen=True)
class Reinforce(PolicyAndValue):
  """The paper's estimator: REINFORCE with a learned value baseline, one sample per prompt.

  Trains {"policy", "value"}; batches hold tokens, input_mask [B, P + N], response_mask [B, N]
  and (for targets) reward [B]; the prompt length P is static.
  """

  policy: models.Transformer
  value: models.Transformer  # scalar_head=True
  prompt_len: int
  config: RLConfig = RLConfig()
  samples_per_prompt: int = 1
  method: ClassVar[str] = "RL"  # the paper's RL

  @classmethod
  def build(cls, policy: models.Transformer, prompt_len: int, config: RLConfig = RLConfig()) -> Reinforce:
    """The estimator for a policy model: the value model is the same decoder with a scalar head."""
    return cls(policy, policy.clone(scalar_head=True), prompt_len, config)  # with the policy's adapters, if any

  def returns_and_advantages(self, reward, logp, ref_logp, values, mask, kl_coef) -> dict:
    """Undiscounted returns of the KL-penalized rewards, minus the value baseline."""
    returns, advantages = reinforce_targets(reward, logp, ref_logp, values, mask, kl_coef)
    return {"returns": returns, "advantages": advantages}

  def losses(self, logp, values, batch, mask):
    """The score-function policy loss and the squared error of the values to the returns."""
    return policy_loss(logp, batch["advantages"], mask), value_loss(values, batch["returns"], mask), {}
