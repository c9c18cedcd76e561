"""Pipeline stages: each runs one step of the method from plain arguments (gin binds them).

Every stage function is decorated with `stage`: its counts and sizes are checked before any
work starts, and it runs holding a lock on its workdir (records.workdir_lock).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from rlaif_jax import records
from rlaif_jax.checks import check_arguments


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
