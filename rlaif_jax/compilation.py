"""jax.jit with a public count of its traces, so runs and tests can check that a hot loop
compiles once (each trace of a jitted function is one compiled program per input signature)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax


class CountedJit:
  """jax.jit(fn, **jit_kwargs) whose `traces` counts how often fn was traced (compiled)."""

  def __init__(self, fn: Callable, **jit_kwargs):
    self.traces = 0

    @functools.wraps(fn)
    def traced(*args, **kwargs):
      self.traces += 1  # runs only while jax traces fn, never when a compiled program runs
      return fn(*args, **kwargs)

    self._jitted = jax.jit(traced, **jit_kwargs)

  def __call__(self, *args, **kwargs):
    return self._jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self._jitted.lower(*args, **kwargs)
