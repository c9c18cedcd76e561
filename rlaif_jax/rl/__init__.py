"""RL from a reward: the shared rollout loop and its estimators (paper section 2.2).

loop.py runs any estimator (sample -> cut -> score -> shape -> targets -> updates); reinforce.py
is the paper's estimator (REINFORCE with a value baseline, KL to the SFT policy) and its math;
advantages.py holds the pure advantage and loss functions of the field's other estimators
(RLOO, GRPO, PPO with GAE).
"""

from rlaif_jax.rl.advantages import gae_advantages, grpo_advantages, ppo_policy_loss, rloo_advantages
from rlaif_jax.rl.loop import STATE_FILE, LoopSettings, RolloutLoop, rollout_generator
from rlaif_jax.rl.reinforce import (
  POLICY,
  VALUE,
  Reinforce,
  RLConfig,
  RunningMoments,
  adaptive_kl_coef,
  explained_variance,
  masked_mean,
  masked_var,
  masked_whiten,
  policy_loss,
  policy_token_stats,
  reinforce_targets,
  shape_rewards,
  token_entropy,
  token_values,
  two_optimizers,
  value_loss,
)

__all__ = [
  "POLICY",
  "STATE_FILE",
  "VALUE",
  "LoopSettings",
  "RLConfig",
  "Reinforce",
  "RolloutLoop",
  "RunningMoments",
  "adaptive_kl_coef",
  "explained_variance",
  "gae_advantages",
  "grpo_advantages",
  "masked_mean",
  "masked_var",
  "masked_whiten",
  "policy_loss",
  "policy_token_stats",
  "ppo_policy_loss",
  "reinforce_targets",
  "rloo_advantages",
  "rollout_generator",
  "shape_rewards",
  "token_entropy",
  "token_values",
  "two_optimizers",
  "value_loss",
]
