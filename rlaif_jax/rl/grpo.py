"""GRPO (Shao et al. 2024) and Dr. GRPO (Liu et al. 2025): group-relative advantages, no value model.

Each prompt gets K >= 2 sampled responses. A response's advantage is its reward standardized
within its prompt's group (`grpo_advantages`) and applies to every one of its tokens; the
policy takes PPO's clipped-ratio step against the rollout policy's log-probs
(`ppo_policy_loss`, clip_eps), so update_epochs > 1 stays near the sampled policy.

KL to pi_SFT, weighted by alpha (RLConfig.kl_coef, adaptive with target_kl):
- kl_in_reward=False (GRPO's choice): a loss term, the k3 estimator per token,
  exp(ref - logp) - (ref - logp) - 1 >= 0 (unbiased for KL(pi || pi_SFT) on pi's samples,
  never negative), aggregated like the policy term;
- kl_in_reward=True: in the sequence reward as REINFORCE has it (`kl_shaped_reward`), before
  the group normalization; no loss term.

Aggregation over tokens: GRPO averages each response's token terms (1 / |y_i|), then averages
over responses. Dr. GRPO (dr_grpo=True) removes the two normalizations that bias it: the
advantage is r - mean_K r (no division by the group's std, which up-weights prompts whose
responses score nearly alike) and token terms are summed and divided by the constant
(responses x max_new_tokens) instead of each response's length (which favours long wrong
responses and short right ones).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlaif_jax import models
from rlaif_jax.rl.advantages import clip_fraction, grpo_advantages, ppo_policy_loss
from rlaif_jax.rl.groups import PolicyOnly, by_prompt, check_group_size, group_reward_std
from rlaif_jax.rl.reinforce import (
  POLICY,
  RLConfig,
  kl_shaped_reward,
  masked_var,
  rollout_metrics,
  rollout_token_stats,
  update_metrics,
  update_token_stats,
)

Array = jax.Array


def k3_kl(logp, ref_logp) -> Array:
  """The k3 estimator of KL(pi || pi_SFT) per token (Schulman 2020), [B, T]:
  exp(ref - logp) - (ref - logp) - 1."""
  d = jnp.asarray(ref_logp, jnp.float32) - jnp.asarray(logp, jnp.float32)
  return jnp.exp(d) - d - 1.0


def grpo_targets(
  reward, logp, ref_logp, mask, kl_coef, samples_per_prompt: int, kl_in_reward: bool, dr_grpo: bool
) -> tuple[Array, Array]:
  """Sequence rewards [B * K] and token advantages [B * K, T] (0 where mask is 0).

  reward: [B * K] the scorer's (shaped) rewards, the K responses of a prompt in adjacent rows;
  logp, ref_logp, mask: [B * K, T]; kl_coef: alpha, a scalar, used only with kl_in_reward.
  The advantage is grpo_advantages over each prompt's K sequence rewards, with the std
  normalization unless dr_grpo.
  """
  sequence_reward = jnp.asarray(reward, jnp.float32)
  if kl_in_reward:
    sequence_reward = kl_shaped_reward(reward, logp, ref_logp, mask, kl_coef)
  advantages = grpo_advantages(by_prompt(sequence_reward, samples_per_prompt), normalize_std=not dr_grpo)
  return sequence_reward, jnp.reshape(advantages, (-1, 1)) * jnp.asarray(mask, jnp.float32)


def _per_response(per_token, mask, dr_grpo: bool) -> Array:
  """Token terms [B, T] -> one term per response [B]: their mean over the response's valid
  tokens (GRPO), or their sum over T, the longest response (Dr. GRPO)."""
  valid = jnp.asarray(mask).astype(jnp.bool_)
  total = jnp.sum(jnp.where(valid, per_token, 0.0), axis=-1)
  length = per_token.shape[-1] if dr_grpo else jnp.maximum(jnp.sum(valid, axis=-1), 1)
  return total / jnp.asarray(length, jnp.float32)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, kl_coef, clip_eps, dr_grpo: bool) -> tuple[Array, dict]:
  """The GRPO loss -> (scalar, {"policy_loss", "k3_kl"}).

  logp, old_logp (the rollout policy's), ref_logp (pi_SFT's), advantages, mask: [B, T];
  kl_coef: the k3 term's weight, a scalar or [B] (0: no KL term). Per response, the
  clipped-ratio term of ppo_policy_loss plus kl_coef * k3 are aggregated by `_per_response`;
  the loss is their mean over responses. "k3_kl" is the unweighted k3 term.
  """
  clipped = jax.vmap(lambda *rows: ppo_policy_loss(*(r[None] for r in rows), clip_eps))
  policy = clipped(logp, old_logp, advantages, mask)  # [B]: per-response means over valid tokens
  if dr_grpo:  # from the mean over valid tokens back to the sum, over the constant T
    policy = policy * jnp.maximum(jnp.sum(jnp.asarray(mask, jnp.float32), axis=-1), 1.0) / mask.shape[-1]
  valid = jnp.asarray(mask).astype(jnp.bool_)
  kl = _per_response(k3_kl(jnp.where(valid, logp, 0.0), jnp.where(valid, ref_logp, 0.0)), mask, dr_grpo)
  kl_coef = jnp.asarray(kl_coef, jnp.float32)
  loss = jnp.mean(policy + kl_coef * kl)
  return loss, {"policy_loss": jnp.mean(policy), "k3_kl": jnp.mean(kl)}


@dataclasses.dataclass(frozen=True)
class Grpo(PolicyOnly):
  """GRPO over the shared rollout loop: K responses per prompt, the policy trained alone.

  Batches hold tokens, input_mask [B * K, P + N], response_mask [B * K, N] and (for targets)
  reward [B * K]; the prompt length P is static. RLConfig's reward shaping, update_epochs and
  minibatches apply as for Reinforce; whiten_advantages and value_coef do not (the advantages
  are normalized per group, or on purpose not at all with dr_grpo).
  """

  policy: models.Transformer
  prompt_len: int
  config: RLConfig = RLConfig()
  samples_per_prompt: int = 4  # K
  clip_eps: float = 0.2
  kl_in_reward: bool = False  # False: the k3 KL loss term; True: KL in the sequence reward
  dr_grpo: bool = False  # no std normalization, token sums over a constant length

  @property
  def method(self) -> str:
    return "Dr. GRPO" if self.dr_grpo else "GRPO"

  def __post_init__(self):
    check_group_size("Grpo", self.samples_per_prompt)

  @classmethod
  def build(
    cls,
    policy: models.Transformer,
    prompt_len: int,
    config: RLConfig = RLConfig(),
    samples_per_prompt: int = 4,
    clip_eps: float = 0.2,
    kl_in_reward: bool = False,
    dr_grpo: bool = False,
  ) -> Grpo:
    """The estimator for a policy model; K = samples_per_prompt >= 2 responses per prompt."""
    return cls(policy, prompt_len, config, samples_per_prompt, clip_eps, kl_in_reward, dr_grpo)

  def targets(self, params, ref_params, batch, kl_coef):
    """Rollout and reference log-probs, token advantages, each row's KL-term weight, metrics."""
    logp, ref_logp, entropy, mask = rollout_token_stats(self.policy, params[POLICY], ref_params, batch, self.prompt_len)
    k = self.samples_per_prompt
    sequence_reward, advantages = grpo_targets(
      batch["reward"], logp, ref_logp, mask, kl_coef, k, self.kl_in_reward, self.dr_grpo
    )
    loss_kl_coef = 0.0 if self.kl_in_reward else kl_coef  # per row, so the adaptive alpha reaches loss_fn
    metrics = rollout_metrics(logp, ref_logp, entropy, mask) | {
      "sequence_reward_mean": jnp.mean(sequence_reward),
      "group_reward_std": group_reward_std(sequence_reward, k),
      "advantage_std": jnp.sqrt(masked_var(advantages, mask)),
    }
    targets = {"old_logp": logp, "ref_logp": ref_logp, "advantages": advantages}
    targets["kl_coef"] = jnp.full(mask.shape[:1], loss_kl_coef, jnp.float32)
    return targets, metrics

  def loss_fn(self, params, batch, rng):
    del rng
    logp, entropy, mask = update_token_stats(self.policy, params[POLICY], batch, self.prompt_len)
    old_logp = batch["old_logp"]
    loss, metrics = grpo_loss(
      logp, old_logp, batch["ref_logp"], batch["advantages"], mask, batch["kl_coef"], self.clip_eps, self.dr_grpo
    )
    return loss, metrics | {
      "clip_fraction": clip_fraction(logp, old_logp, mask, self.clip_eps),
      **update_metrics(logp, entropy, old_logp, mask),
      "weight": jnp.float32(mask.shape[0]),  # the loss is a mean over responses
    }
