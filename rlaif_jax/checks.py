"""Counts and sizes checked before work starts, with errors that name the setting, and what the
running stage's result depends on (`current_made_with`, set by the stage decorator,
rlaif_jax.stages.base). The ground floor: it imports nothing of the project's."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping

# Arguments that must be positive integers (None, where it is the default, means "all" or "off").
POSITIVE = (
  "accum_steps", "batch_size", "checkpoint_every", "chunk_size", "judge_max_len", "kl_horizon", "max_len",
  "max_new_tokens", "max_prompt_len", "minibatches", "update_epochs", "num_iterations", "num_steps", "log_every",
  "sample_every", "limit", "harmless_limit", "keep_checkpoints", "eos_check_every", "kl_max_new_tokens",
)  # fmt: skip
# Arguments that may be 0 (off) but not negative.
NON_NEGATIVE = ("top_k", "eval_every", "exemplar_draws", "num_samples", "resample_every", "kl_prompts")

# Sampling settings with a range (NaN fails every comparison, so it is refused too).
RANGES = {
  "temperature": (lambda v: 0 <= v < float("inf"), "a number >= 0 (0 is greedy)"),
  "top_p": (lambda v: 0 < v <= 1, "in (0, 1] (1 keeps every token)"),
}


def check_arguments(name: str, arguments: Mapping[str, object]) -> None:
  """A ValueError naming the first count or size that is not a positive (or, for the ones that
  switch something off at 0, non-negative) integer; `name` is the stage function's or config
  class's name."""
  for key, value in arguments.items():
    if key in RANGES and value is not None:
      ok, need = RANGES[key]
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ValueError(f"{name}.{key}={value!r}: must be {need}")
    if value is None or key not in POSITIVE + NON_NEGATIVE:
      continue
    floor = 1 if key in POSITIVE else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < floor:
      need = "a positive integer" if floor else "an integer >= 0"
      raise ValueError(f"{name}.{key}={value!r}: must be {need}")


# What the running stage's result depends on, computed when first asked for (the stage decorator
# sets it; trainers claim their checkpoints with it).
_MADE_WITH: contextvars.ContextVar[Callable[[], dict] | None] = contextvars.ContextVar("made_with", default=None)


@contextlib.contextmanager
def making(compute: Callable[[], dict]) -> Iterator[None]:
  """Runs a stage with compute() as what its result depends on (current_made_with)."""
  token = _MADE_WITH.set(compute)
  try:
    yield
  finally:
    _MADE_WITH.reset(token)


def current_made_with() -> dict | None:
  """What the running stage's result depends on (made_with, computed when first asked for: only
  stages that train read the files and manifests it digests), or None outside a stage."""
  found = _MADE_WITH.get()
  return found() if found is not None else None
