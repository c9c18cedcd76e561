"""RL from a reward: the shared rollout loop and its estimators (paper section 2.2).

loop.py runs any estimator (sample -> cut -> score -> shape -> targets -> updates); reinforce.py
is the paper's estimator (REINFORCE with a value baseline, KL to the SFT policy) and its math.
"""

from rlaif_jax.rl.loop import STATE_FILE, LoopSettings, RolloutLoop, rollout_generator
from rlaif_jax.rl.reinforce import (
  POLICY,
  VALUE,
  Reinforce,
  RLConfig,
  RunningMoments,
  adaptive_kl_coef,
  cut_responses,
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
  "cut_responses",
  "explained_variance",
  "masked_mean",
  "masked_var",
  "masked_whiten",
  "policy_loss",
  "policy_token_stats",
  "reinforce_targets",
  "rollout_generator",
  "shape_rewards",
  "token_entropy",
  "token_values",
  "two_optimizers",
  "value_loss",
]
