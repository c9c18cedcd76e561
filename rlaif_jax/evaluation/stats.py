"""Win rates, confidence intervals, length control and tests between policies (paper section 2.3).

A judge returns p = P(A preferred) for each input. The win indicator is 1 when p > 0.5 and 0
when p < 0.5. A judge that scores both orders cannot tie except on identical responses (then
p = 0.5 exactly, as P_AB(1) + P_BA(2) = 1): those count as half a win for each side, so the
win rates of A vs B and B vs A always add up to 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import special

TIE_TOLERANCE = 1e-6


def win_indicators(p_first: Sequence[float]) -> np.ndarray:
  """[N] in {0, 0.5, 1}: 1 where the first response is preferred, 0.5 on an exact tie."""
  p = np.asarray(p_first, np.float64)
  wins = (p > 0.5).astype(np.float64)
  wins[np.abs(p - 0.5) <= TIE_TOLERANCE] = 0.5
  return wins


def normal_quantile(confidence: float) -> float:
  """z with P(|Z| < z) = confidence (1.96 for 0.95)."""
  return float(special.ndtri(0.5 + confidence / 2))


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
  """The Wilson score interval for a binomial proportion (better than Wald at small n or
  rates near 0 and 1); (nan, nan) when n is 0. Half wins count as half a success."""
  if n == 0:
    return float("nan"), float("nan")
  z = normal_quantile(confidence)
  phat = successes / n
  centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
  return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def rate_with_interval(indicators: Sequence[float], confidence: float = 0.95) -> dict:
  """{rate, low, high, n} of 0/1 (or 0.5) indicators with a Wilson interval."""
  x = np.asarray(indicators, np.float64)
  low, high = wilson_interval(float(x.sum()), len(x), confidence)
  return {"rate": float(x.mean()) if len(x) else float("nan"), "low": low, "high": high, "n": len(x)}


def welch_test(a: Sequence[float], b: Sequence[float]) -> dict:
  """Welch's two-sample t-test of equal means (unequal variances); two-sided p-value.

  Used on win indicators: is policy A's win rate (against a common baseline) different from
  policy B's? Returns {t, df, p_value, diff}; p_value is 1 when both samples are constant
  and equal, 0 when constant and different.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2 or len(b) < 2:
    raise ValueError(f"welch_test needs at least 2 values per sample, got {len(a)} and {len(b)}")
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  diff = float(a.mean() - b.mean())
  if va + vb == 0:
    return {"t": float("nan"), "df": float("nan"), "p_value": 1.0 if diff == 0 else 0.0, "diff": diff}
  t = diff / np.sqrt(va + vb)
  df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  p = 2 * special.stdtr(df, -abs(t))  # Student t CDF
  return {"t": float(t), "df": float(df), "p_value": float(p), "diff": diff}


def fit_logistic(
  x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iterations: int = 100
) -> tuple[np.ndarray, np.ndarray]:
  """Logistic regression of y in [0, 1] (fractional y allowed) on the columns of x [N, D] by
  Newton's method, minimizing mean log loss + l2/2 |w|^2 (the small penalty keeps the fit finite
  when the classes separate). Returns (weights [D], covariance [D, D] from the Hessian)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n, d = x.shape
  w = np.zeros(d)
  for _ in range(iterations):
    p = special.expit(x @ w)
    grad = x.T @ (p - y) / n + l2 * w
    hess = (x * (p * (1 - p))[:, None]).T @ x / n + l2 * np.eye(d)
    step = np.linalg.solve(hess, grad)
    w -= step
    if np.max(np.abs(step)) < 1e-10:
      break
  p = special.expit(x @ w)
  hess = (x * (p * (1 - p))[:, None]).T @ x + n * l2 * np.eye(d)  # of the summed log loss
  return w, np.linalg.inv(hess)


def length_controlled_win_rate(
  wins: Sequence[float], length_diff: Sequence[float], confidence: float = 0.95, l2: float = 1e-3
) -> dict:
  """Win rate at equal length: logistic regression win ~ b0 + b1 * (len_A - len_B), read at a
  difference of 0, i.e. sigmoid(b0), with an interval from b0's standard error.

  Length differences are scaled by their RMS before fitting (this changes b1's units, not the
  reading at 0). Returns {rate, low, high, slope_per_token, n}.
  """
  y = np.asarray(wins, np.float64)
  diff = np.asarray(length_diff, np.float64)
  scale = float(np.sqrt(np.mean(diff**2))) or 1.0
  x = np.stack([np.ones_like(diff), diff / scale], axis=1)
  w, cov = fit_logistic(x, y, l2)
  se = float(np.sqrt(cov[0, 0]))
  z = normal_quantile(confidence)
  return {
    "rate": float(special.expit(w[0])),
    "low": float(special.expit(w[0] - z * se)),
    "high": float(special.expit(w[0] + z * se)),
    "slope_per_token": float(w[1] / scale),
    "n": len(y),
  }


RANK_DECIMALS = 3  # ranking scores equal to this many decimals (as printed) share a rank


def rank_policies(win_matrix: Mapping[str, Mapping[str, float]]) -> list[tuple[str, float]]:
  """Policies by their mean win rate against every other policy, best first; scores equal to
  RANK_DECIMALS decimals are listed by name (they share a rank: `shared_ranks`)."""
  names = sorted(win_matrix)
  scores = {
    a: float(np.mean([win_matrix[a][b] for b in names if b != a and b in win_matrix[a]] or [np.nan])) for a in names
  }
  return sorted(scores.items(), key=lambda kv: (-_rank_key(kv[1]), kv[0]))


def _rank_key(score: float) -> float:
  return float(np.nan_to_num(round(score, RANK_DECIMALS), nan=-1.0))


def shared_ranks(ranking: Sequence[tuple[str, float]]) -> list[int]:
  """Competition ranks (1, 2, 2, 4) of a best-first `rank_policies` list: scores equal to
  RANK_DECIMALS decimals share the rank of the first of them."""
  keys = [_rank_key(score) for _, score in ranking]
  return [keys.index(k) + 1 for k in keys]


def not_separated(ranking: Sequence[tuple[str, float]], pairwise: Mapping[str, Mapping[str, dict]]) -> list[list[str]]:
  """The neighbours [a, b] of a best-first ranking whose head-to-head win rate (pairwise[a][b],
  {rate, low, high}) has an interval containing 0.5: their comparison does not separate them."""
  names = [name for name, _ in ranking]
  close = []
  for a, b in zip(names, names[1:]):
    v = pairwise.get(a, {}).get(b)
    if v is not None and v["low"] <= 0.5 <= v["high"]:
      close.append([a, b])
  return close


def ranking_summary(pairwise: Mapping[str, Mapping[str, dict]]) -> dict:
  """{ranking, ranks, ranking_not_separated} from pairwise win rates with intervals: the
  policies best first by mean win rate, each one's shared rank, the neighbours not separated."""
  ranking = rank_policies({a: {b: v["rate"] for b, v in row.items()} for a, row in pairwise.items()})
  ranks = dict(zip([name for name, _ in ranking], shared_ranks(ranking)))
  return {"ranking": ranking, "ranks": ranks, "ranking_not_separated": not_separated(ranking, pairwise)}


def length_stats(lengths: Sequence[int]) -> dict:
  """{mean, std, median, p90, min, max} of response lengths."""
  x = np.asarray(lengths, np.float64)
  if not len(x):
    return {k: float("nan") for k in ("mean", "std", "median", "p90", "min", "max")}
  return {
    "mean": float(x.mean()),
    "std": float(x.std()),
    "median": float(np.median(x)),
    "p90": float(np.percentile(x, 90)),
    "min": float(x.min()),
    "max": float(x.max()),
  }
