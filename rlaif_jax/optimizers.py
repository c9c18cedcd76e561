"""Optimizers and learning-rate schedules, built from plain arguments (gin binds them)."""

from __future__ import annotations

from collections.abc import Callable

import optax

Schedule = Callable[[int], float]


def warmup_cosine(peak_value: float, warmup_steps: int, total_steps: int, end_fraction: float = 0.1) -> Schedule:
  """Linear warmup from 0 to peak_value, then cosine decay to end_fraction * peak_value."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak_value,
    warmup_steps=warmup_steps,
    decay_steps=max(total_steps, warmup_steps + 1),
    end_value=end_fraction * peak_value,
  )


def warmup_constant(peak_value: float, warmup_steps: int = 0) -> Schedule:
  """Linear warmup, then constant."""
  if warmup_steps <= 0:
    return optax.constant_schedule(peak_value)
  return optax.join_schedules(
    [optax.linear_schedule(0.0, peak_value, warmup_steps), optax.constant_schedule(peak_value)], [warmup_steps]
  )


def adamw(
  learning_rate: float | Schedule = 1e-4,
  b1: float = 0.9,
  b2: float = 0.95,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  grad_clip_norm: float | None = 1.0,
) -> optax.GradientTransformation:
  """AdamW behind global-norm gradient clipping (no clipping when grad_clip_norm is None)."""
  parts = []
  if grad_clip_norm is not None:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return optax.chain(*parts)
