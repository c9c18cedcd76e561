"""PPO (Schulman et al. 2017) as InstructGPT has it (Ouyang et al. 2022): GAE advantages from a
value model, clipped policy and value steps, several epochs over each rollout batch.

One response per prompt, as REINFORCE. The per-token rewards are REINFORCE's
(`kl_token_rewards`): -alpha (log pi - log pi_SFT) on every response token plus (1 - alpha) R
on the last one (alpha: RLConfig.kl_coef, adaptive with target_kl), so PPO, REINFORCE and RLOO
optimize one objective. They differ in the advantage: REINFORCE's is the whole return minus the
value (unbiased, high variance); PPO's is GAE(gamma, lambda) (`gae_advantages`), an
exponentially weighted sum of the TD errors r_t + gamma V_t+1 - V_t, which trades the return's
variance for the value model's bias (gamma = lambda = 1 gives REINFORCE's advantage exactly,
lambda = 0 the one-step TD error). The value model regresses on GAE's returns A + V.

Both models take steps that stay near the rollout, so update_epochs x minibatches updates can
reuse one batch of samples:
- the policy through `ppo_policy_loss`: the ratio pi / pi_rollout clipped to 1 +- clip_eps;
- the value model through `clipped_value_loss`: per token the larger of the squared errors of
  V and of V held within value_clip of the rollout's value (value_clip=None: plain squared
  error).
On the first update step over a batch the ratio is 1 and neither clip acts.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from rlaif_jax import models
from rlaif_jax.rl.advantages import clip_fraction, gae_advantages, ppo_policy_loss
from rlaif_jax.rl.reinforce import PolicyAndValue, RLConfig, kl_token_rewards, masked_mean, value_loss

Array = jax.Array


def clipped_value_loss(values, old_values, returns, mask, clip: float | None) -> Array:
  """PPO's value loss -> scalar: the mean over valid tokens of
  max((V - G)^2, (old_V + clip(V - old_V, -clip, clip) - G)^2).

  values (the model's now), old_values (the rollout's), returns, mask: [B, T]. The returns and
  old values are targets (no gradient). clip: a Python float, or None for value_loss unclipped.
  """
  if clip is None:
    return value_loss(values, returns, mask)
  returns = jax.lax.stop_gradient(jnp.asarray(returns, jnp.float32))
  old_values = jax.lax.stop_gradient(jnp.asarray(old_values, jnp.float32))
  held = old_values + jnp.clip(values - old_values, -clip, clip)
  return masked_mean(jnp.maximum(jnp.square(values - returns), jnp.square(held - returns)), mask)


@dataclasses.dataclass(frozen=True)
class Ppo(PolicyAndValue):
  """PPO over the shared rollout loop: one response per prompt, policy and value model trained.

  Batches hold tokens, input_mask [B, P + N], response_mask [B, N] and (for targets) reward [B];
  the prompt length P is static. RLConfig's reward shaping, whiten_advantages, value_coef,
  update_epochs and minibatches apply as for Reinforce; the clips matter with several updates
  per batch (gin/runs/rl_ppo.gin runs 4 epochs x 4 minibatches).
  """

  policy: models.Transformer
  value: models.Transformer  # scalar_head=True
  prompt_len: int
  config: RLConfig = RLConfig()
  samples_per_prompt: int = 1
  method: ClassVar[str] = "PPO"
  gamma: float = 1.0  # discount per token
  lam: float = 0.95  # GAE's lambda: 1 is REINFORCE's advantage, 0 the one-step TD error
  clip_eps: float = 0.2  # policy ratio clip
  value_clip: float | None = 0.2  # how far V may move from the rollout's value; None: unclipped

  def __post_init__(self):
    if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
      raise ValueError(f"Ppo.gamma={self.gamma!r}, Ppo.lam={self.lam!r}: both must lie in [0, 1]")
    if not (self.clip_eps > 0 and (self.value_clip is None or self.value_clip > 0)):
      raise ValueError(f"Ppo.clip_eps={self.clip_eps!r}, Ppo.value_clip={self.value_clip!r}: must be > 0 (or None)")

  @classmethod
  def build(
    cls,
    policy: models.Transformer,
    prompt_len: int,
    config: RLConfig = RLConfig(),
    gamma: float = 1.0,
    lam: float = 0.95,
    clip_eps: float = 0.2,
    value_clip: float | None = 0.2,
  ) -> Ppo:
    """The estimator for a policy model: the value model is the same decoder with a scalar head."""
    value = policy.clone(scalar_head=True)  # with the policy's adapters, if any
    return cls(policy, value, prompt_len, config, 1, gamma, lam, clip_eps, value_clip)

  def returns_and_advantages(self, reward, logp, ref_logp, values, mask, kl_coef) -> dict:
    """GAE over the KL-penalized token rewards; the rollout's values travel to the value clip."""
    rewards = kl_token_rewards(reward, logp, ref_logp, mask, kl_coef)
    advantages, returns = gae_advantages(rewards, values, mask, self.gamma, self.lam)
    return {"returns": returns, "advantages": advantages, "old_values": values}

  def losses(self, logp, values, batch, mask):
    """The clipped-ratio policy loss, the clipped value loss and the policy's clip fraction."""
    old_logp = batch["old_logp"]
    p_loss = ppo_policy_loss(logp, old_logp, batch["advantages"], mask, self.clip_eps)
    v_loss = clipped_value_loss(values, batch["old_values"], batch["returns"], mask, self.value_clip)
    return p_loss, v_loss, {"clip_fraction": clip_fraction(logp, old_logp, mask, self.clip_eps)}
