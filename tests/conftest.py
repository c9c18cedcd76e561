"""Test harness: 8 forced CPU devices, set before jax is imported anywhere, and one persistent
compilation cache per test run."""

import ctypes
import gc
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Tests build the same tiny models at the same shapes again and again, in the xdist workers and
# in the processes the CLI tests launch: one XLA compilation cache for all of them, so each
# program compiles once per run. The process that imports this first (pytest, or xdist's
# controller, whose environment the workers inherit) makes the folder and removes it at the end;
# a JAX_COMPILATION_CACHE_DIR set by the user is used and kept.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="rlaif_jax_tests_xla_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The first 200 pairs of Anthropic's hh-rlhf harmless-base test split (MIT, its LICENSE beside it).
REAL_HH = os.path.join(ROOT, "rlaif_jax", "data", "fixtures", "hh-rlhf-sample", "harmless-base-test-head200.jsonl.gz")


@pytest.fixture(scope="module", autouse=True)
def _release_memory():
  """After each test module, what it compiled and allocated is handed back: JAX's compiled programs
  and tracing caches (the persistent compilation cache on disk stays), Python's garbage, and the
  heap pages glibc keeps after a real model's gigabyte of arrays is freed. A worker's memory
  otherwise only grows, module after module, and two workers beside a multi-process test reached
  within 0.4 GB of the machine's 24 GB."""
  yield
  gc.collect()
  jax.clear_caches()
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc (macOS): the allocator keeps its pages
    pass


# The longest single test, handed out first: xdist gives tests out in collection order (after the
# xdist_group units, largest first), and a multi-process pipeline dealt out late can run on alone
# at the end of the suite while the other worker has nothing left to do.
LONGEST_FIRST = ("test_multihost.py::test_pipeline_on_two_processes_equals_one_process_resumes_and_skips",)


def pytest_collection_modifyitems(config, items):
  items.sort(key=lambda item: not item.nodeid.endswith(LONGEST_FIRST))  # stable: the rest keep their order


def pytest_unconfigure(config):
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_config():
  from rlaif_jax import models

  return models.tiny()


@pytest.fixture(scope="session")
def tiny_model_and_params(tiny_config):
  from rlaif_jax import models

  model = models.Transformer(tiny_config, scalar_head=True)
  return model, models.init_params(model, jax.random.PRNGKey(0))


def randomize(params, seed=1, scale=0.3):
  """Non-zero norm scales and score head, so the tests see every parameter act."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  noisy = [x + scale * jax.random.normal(k, x.shape, x.dtype) * (1 if x.ndim <= 1 else 0) for x, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, noisy)
