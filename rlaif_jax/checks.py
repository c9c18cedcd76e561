"""Counts and sizes checked before work starts, with errors that name the setting, and the
decorator every stage function wears (`stage`)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping

from rlaif_jax import records

# Arguments that must be positive integers (None, where it is the default, means "all" or "off").
POSITIVE = (
  "accum_steps", "batch_size", "checkpoint_every", "chunk_size", "judge_max_len", "kl_horizon", "max_len",
  "max_new_tokens", "max_prompt_len", "minibatches", "update_epochs", "num_iterations", "num_steps", "log_every",
  "sample_every", "limit", "harmless_limit", "keep_checkpoints",
)  # fmt: skip
# Arguments that may be 0 (off) but not negative.
NON_NEGATIVE = ("top_k", "eval_every", "exemplar_draws", "num_samples", "resample_every")


def check_arguments(name: str, arguments: Mapping[str, object]) -> None:
  """A ValueError naming the first count or size that is not a positive (or, for the ones that
  switch something off at 0, non-negative) integer; `name` is the stage function's or config
  class's name."""
  for key, value in arguments.items():
    if value is None or key not in POSITIVE + NON_NEGATIVE:
      continue
    floor = 1 if key in POSITIVE else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < floor:
      need = "a positive integer" if floor else "an integer >= 0"
      raise ValueError(f"{name}.{key}={value!r}: must be {need}")


def stage(fn: Callable) -> Callable:
  """Checks fn's arguments (check_arguments), then runs it holding its workdir's lock."""
  signature = inspect.signature(fn)

  @functools.wraps(fn)
  def run(*args, **kwargs):
    arguments = signature.bind_partial(*args, **kwargs).arguments
    check_arguments(fn.__name__, arguments)
    with records.workdir_lock(arguments.get("workdir")):
      return fn(*args, **kwargs)

  return run
