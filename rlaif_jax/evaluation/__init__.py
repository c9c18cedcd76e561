"""Evaluation: win rates with intervals, length control, tests between policies, human sheets."""

from rlaif_jax.evaluation.human import export_sheets, import_rankings, read_rankings, win_rates_from_ranks
from rlaif_jax.evaluation.stats import (
  fit_logistic,
  length_controlled_win_rate,
  length_stats,
  normal_quantile,
  not_separated,
  rank_policies,
  ranking_summary,
  rate_with_interval,
  shared_ranks,
  welch_test,
  wilson_interval,
  win_indicators,
)

__all__ = [
  "export_sheets",
  "fit_logistic",
  "import_rankings",
  "length_controlled_win_rate",
  "length_stats",
  "normal_quantile",
  "not_separated",
  "rank_policies",
  "ranking_summary",
  "rate_with_interval",
  "read_rankings",
  "shared_ranks",
  "welch_test",
  "wilson_interval",
  "win_indicators",
  "win_rates_from_ranks",
]
