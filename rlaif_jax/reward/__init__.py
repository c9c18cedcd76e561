"""Reward models: a decoder with a scalar head read at the last real token, trained on soft
labels (paper section 2.2.1); `RewardScorer` scores (input, response) texts with one.

model.py holds the objective, scoring and statistics; training.py the labeled pairs and the
evaluator against human and AI labels.
"""

from rlaif_jax.reward.model import (
  STATS_FILE,
  RewardObjective,
  RewardScorer,
  init_from_lm,
  last_token_values,
  pair_rewards,
  reward_stats,
)
from rlaif_jax.reward.training import (
  DEFINITIONS,
  LABEL_SOURCES,
  accuracy_intervals,
  labeled_examples,
  make_evaluator,
  pair_arrays,
  preference_evaluator,
  read_ai_labels,
  split_pairs,
  train_eval_pairs,
)

__all__ = [
  "DEFINITIONS",
  "LABEL_SOURCES",
  "STATS_FILE",
  "accuracy_intervals",
  "RewardObjective",
  "RewardScorer",
  "init_from_lm",
  "labeled_examples",
  "last_token_values",
  "make_evaluator",
  "pair_arrays",
  "pair_rewards",
  "preference_evaluator",
  "read_ai_labels",
  "reward_stats",
  "split_pairs",
  "train_eval_pairs",
]
