"""RL from a reward: the shared rollout loop and its estimators (paper section 2.2).

estimator.py is the protocol every estimator follows (a new one is a module, a gin file and
its tests); loop.py runs any estimator (sample -> cut -> score -> shape -> targets -> updates); reinforce.py
is the paper's estimator (REINFORCE with a value baseline, KL to the SFT policy) and its math;
ppo.py (PPO with GAE, clipped policy and value steps) trains a value model as it does;
rloo.py (RLOO) and grpo.py (GRPO, Dr. GRPO) are value-free estimators over K responses per
prompt (groups.py: what they share); online_dpo.py (OAIF) takes DPO or IPO steps on two
samples per prompt labeled by the AI labeler (scorers.PairwiseScorer); advantages.py holds the pure advantage and loss
functions of the field's estimators (RLOO, GRPO, PPO with GAE).
"""

from rlaif_jax.rl.advantages import gae_advantages, grpo_advantages, ppo_policy_loss, rloo_advantages
from rlaif_jax.rl.estimator import Estimator
from rlaif_jax.rl.grpo import Grpo, grpo_loss, grpo_targets, k3_kl
from rlaif_jax.rl.loop import STATE_FILE, LoopSettings, RolloutLoop, rollout_generator
from rlaif_jax.rl.online_dpo import OnlineDpo
from rlaif_jax.rl.ppo import Ppo, clipped_value_loss
from rlaif_jax.rl.reinforce import (
  POLICY,
  VALUE,
  Reinforce,
  RLConfig,
  RunningMoments,
  adaptive_kl_coef,
  explained_variance,
  kl_shaped_reward,
  kl_token_rewards,
  masked_mean,
  masked_var,
  masked_whiten,
  policy_loss,
  policy_token_stats,
  reinforce_targets,
  rollout_metrics,
  rollout_token_stats,
  sequence_kl,
  shape_rewards,
  token_entropy,
  token_values,
  two_optimizers,
  update_metrics,
  update_token_stats,
  value_loss,
)
from rlaif_jax.rl.rloo import Rloo, rloo_loss, rloo_targets

__all__ = [
  "Estimator",
  "POLICY",
  "STATE_FILE",
  "VALUE",
  "Grpo",
  "LoopSettings",
  "OnlineDpo",
  "Ppo",
  "RLConfig",
  "Reinforce",
  "Rloo",
  "RolloutLoop",
  "RunningMoments",
  "adaptive_kl_coef",
  "clipped_value_loss",
  "explained_variance",
  "gae_advantages",
  "grpo_advantages",
  "grpo_loss",
  "grpo_targets",
  "k3_kl",
  "kl_shaped_reward",
  "kl_token_rewards",
  "masked_mean",
  "masked_var",
  "masked_whiten",
  "policy_loss",
  "policy_token_stats",
  "ppo_policy_loss",
  "reinforce_targets",
  "rloo_advantages",
  "rloo_loss",
  "rloo_targets",
  "rollout_generator",
  "rollout_metrics",
  "rollout_token_stats",
  "sequence_kl",
  "shape_rewards",
  "token_entropy",
  "token_values",
  "two_optimizers",
  "update_metrics",
  "update_token_stats",
  "value_loss",
]
