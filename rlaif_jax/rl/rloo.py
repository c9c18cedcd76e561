"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024), no value model.

Each prompt gets K >= 2 sampled responses. A response's sequence reward carries the KL
penalty to the SFT policy exactly as the paper's REINFORCE does (`kl_shaped_reward`:
(1 - alpha) R - alpha * sum_t (log pi - log pi_SFT), the sum of kl_token_rewards' per-token
rewards), so RLOO and REINFORCE optimize the same objective and differ only in the baseline:
here the mean sequence reward of the prompt's other K - 1 responses (`rloo_advantages`).

The loss is -mean over responses of A_i * sum_t log pi(y_i,t | x, y_i,<t): the score function
of the whole sequence, log pi(y | x), is the sum of its token log-probabilities, and with it
the estimator is the unbiased REINFORCE gradient of the sequence reward. Averaging over a
response's tokens instead would weight each token by 1 / |y|, so the same advantage would
push short responses harder than long ones (the length bias Liu et al. 2025 point out in
GRPO). With RLConfig.whiten_advantages (the default, as for REINFORCE) the advantages are
divided by their standard deviation over the batch's responses, which keeps the step size
independent of the reward's scale; RLOO advantages already have mean 0 per prompt.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from rlaif_jax import models
from rlaif_jax.rl.advantages import rloo_advantages
from rlaif_jax.rl.groups import PolicyOnly, by_prompt, check_group_size, group_reward_std
from rlaif_jax.rl.reinforce import (
  POLICY,
  RLConfig,
  kl_shaped_reward,
  masked_whiten,
  rollout_metrics,
  rollout_token_stats,
  update_metrics,
  update_token_stats,
)

Array = jax.Array


def rloo_targets(reward, logp, ref_logp, mask, kl_coef, samples_per_prompt: int) -> tuple[Array, Array]:
  """Sequence rewards with the KL penalty and their leave-one-out advantages, [B * K] each.

  reward: [B * K] the scorer's (shaped) rewards, the K responses of a prompt in adjacent rows;
  logp, ref_logp, mask: [B * K, T] (the rollout policy's and pi_SFT's token log-probs);
  kl_coef: alpha, a scalar. The advantage of response i is its sequence reward minus the
  mean of its K - 1 siblings'.
  """
  sequence_reward = kl_shaped_reward(reward, logp, ref_logp, mask, kl_coef)
  advantages = rloo_advantages(by_prompt(sequence_reward, samples_per_prompt))
  return sequence_reward, jnp.reshape(advantages, (-1,))


def rloo_loss(logp, advantages, mask) -> Array:
  """-mean over responses of stop_gradient(A_i) * sum over valid t of logp_i,t -> scalar.

  logp, mask: [B, T]; advantages: [B], one per response. Masked tokens add neither value nor
  gradient.
  """
  valid = jnp.asarray(mask).astype(jnp.bool_)
  sequence_logp = jnp.sum(jnp.where(valid, jnp.asarray(logp, jnp.float32), 0.0), axis=-1)
  return -jnp.mean(jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32)) * sequence_logp)


@dataclasses.dataclass(frozen=True)
class Rloo(PolicyOnly):
  """RLOO over the shared rollout loop: K responses per prompt, the policy trained alone.

  Batches hold tokens, input_mask [B * K, P + N], response_mask [B * K, N] and (for targets)
  reward [B * K]; the prompt length P is static. RLConfig's reward shaping, whiten_advantages,
  update_epochs and minibatches apply as for Reinforce; value_coef does not (no value model).
  """

  policy: models.Transformer
  prompt_len: int
  config: RLConfig = RLConfig()
  samples_per_prompt: int = 4  # K
  method: ClassVar[str] = "RLOO"

  def __post_init__(self):
    check_group_size("Rloo", self.samples_per_prompt)

  @classmethod
  def build(
    cls, policy: models.Transformer, prompt_len: int, config: RLConfig = RLConfig(), samples_per_prompt: int = 4
  ) -> Rloo:
    """The estimator for a policy model; K = samples_per_prompt >= 2 responses per prompt."""
    return cls(policy, prompt_len, config, samples_per_prompt)

  def targets(self, params, ref_params, batch, kl_coef):
    """Rollout log-probs and per-response advantages [B * K], and rollout metrics."""
    logp, ref_logp, entropy, mask = rollout_token_stats(self.policy, params[POLICY], ref_params, batch, self.prompt_len)
    k = self.samples_per_prompt
    sequence_reward, raw_advantages = rloo_targets(batch["reward"], logp, ref_logp, mask, kl_coef, k)
    advantages = raw_advantages
    if self.config.whiten_advantages:  # over the responses that have tokens to push
      advantages = masked_whiten(advantages, jnp.sum(mask, axis=-1) > 0)
    metrics = rollout_metrics(logp, ref_logp, entropy, mask) | {
      "sequence_reward_mean": jnp.mean(sequence_reward),
      "group_reward_std": group_reward_std(sequence_reward, k),
      "advantage_std": jnp.std(raw_advantages),
    }
    return {"old_logp": logp, "advantages": advantages}, metrics

  def loss_fn(self, params, batch, rng):
    del rng
    logp, entropy, mask = update_token_stats(self.policy, params[POLICY], batch, self.prompt_len)
    loss = rloo_loss(logp, batch["advantages"], mask)
    return loss, {
      "policy_loss": loss,
      **update_metrics(logp, entropy, batch["old_logp"], mask),
      "weight": jnp.float32(mask.shape[0]),  # the loss is a mean over responses
    }
