"""Meshes, logical-axis rules and shardings.

Modules name logical axes only; this module maps them to the mesh axes `data` (pure data
parallelism), `fsdp` (data parallelism with sharded parameters) and `tensor` (model
parallelism) through a rules table that configuration may replace.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, Any]]

# A logical axis maps to the first rule whose mesh axes are still free for that array, so
# activations ("batch", "length", "embed") shard their batch over data and fsdp and leave
# embed whole, while parameters ("vocab", "embed") shard embed over fsdp.
DEFAULT_RULES: Rules = (
  ("batch", ("data", "fsdp")),
  ("vocab", "tensor"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("embed", "fsdp"),
  ("kv_heads", None),  # often a single head: replicated
  ("kv", None),
  ("length", None),
)


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one axis may be -1 to take the remaining devices.

  Unnamed axes have size 1; the default puts every device on `data`. Devices are laid out by
  jax's mesh_utils (the physical torus on TPU; process order elsewhere, so on a multi-process
  CPU or GPU job the leading axes span the processes and `tensor` stays within one).
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_sizes(shape, len(devices))
  needed = math.prod(sizes.values())
  if needed < len(devices):
    logging.warning("mesh shape %s uses %d of the %d devices", sizes, needed, len(devices))
    devices = devices[:needed]
  shape = [sizes[a] for a in MESH_AXES]
  try:  # on TPU slices, neighbouring chips on the most talkative axis (tensor, then fsdp)
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):  # e.g. a subset of a slice's chips
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def mesh_sizes(shape: Mapping[str, int] | None, num_devices: int) -> dict[str, int]:
  """Each mesh axis's size for a shape over num_devices (make_mesh's arithmetic and checks)."""
  shape = dict(shape or {"data": -1})
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"mesh shape names unknown axes {sorted(unknown)}; the axes are {MESH_AXES}")
  sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
  known = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % known:
      raise ValueError(f"mesh shape {shape}: {num_devices} devices do not divide by {known}")
    sizes[free[0]] = num_devices // known
  needed = math.prod(sizes.values())
  if needed > num_devices:
    raise ValueError(f"mesh shape {sizes} needs {needed} devices but {num_devices} are available")
  return sizes


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch is split."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """Sharding of a batch array: leading axis over the batch mesh axes, the rest whole."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Activates the mesh and the logical rules for with_logical_constraint inside modules."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_shardings(abstract_boxed_tree, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """NamedShardings for a tree whose leaves carry logical metadata (nn.Partitioned).

  Leaves without metadata (scalars, step counters) are replicated.
  """
  specs = nn.get_partition_spec(abstract_boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, rules: Rules, *args):
  """Initializes a tree directly into its shardings, never whole on one host.

  init_fn(*args) returns a tree with nn.Partitioned leaves; the result is unboxed.
  Returns (tree, shardings).
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = nn.meta.unbox(logical_shardings(abstract, mesh, rules))
  unboxed = lambda *a: nn.meta.unbox(init_fn(*a))  # noqa: E731
  with axis_rules(mesh, rules):
    tree = jax.jit(unboxed, out_shardings=shardings)(*args)
  return tree, shardings


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict:
  """Turns this process's rows of the global batch into global sharded arrays.

  Every process passes its own contiguous slice (see `process_slice`).
  """
  out = {}
  for name, local in batch.items():
    local = np.asarray(local)
    global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
    sharding = batch_sharding(mesh, local.ndim, rules)
    out[name] = jax.make_array_from_process_local_data(sharding, local, global_shape)
  return out


def process_slice(global_batch_size: int) -> slice:
  """The rows of the global batch that this process loads."""
  n = jax.process_count()
  if global_batch_size % n:
    raise ValueError(f"batch_size={global_batch_size} must divide by the {n} processes")
  per = global_batch_size // n
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def check_batch_fits(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  """Fails clearly when a batch cannot be split over the mesh's batch axes."""
  n = data_parallel_size(mesh)
  if batch_size % n:
    raise ValueError(
      f"{name}={batch_size} is not divisible by the mesh's data parallelism "
      f"data*fsdp={n} (mesh {dict(mesh.shape)}); pick a multiple of {n}"
    )


def local_rows(batch: Mapping[str, np.ndarray], n: int) -> dict:
  """This process's rows of a global host batch of n rows."""
  return {k: v[process_slice(n)] for k, v in batch.items()}


def put_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict:
  """A global host batch (every process holds all of it) -> global arrays sharded over the
  batch axes, each process contributing its own rows; safe on a mesh that spans processes."""
  n = len(next(iter(batch.values())))
  return shard_batch(local_rows(batch, n), mesh, rules)


def to_host(x) -> np.ndarray:
  """A global array's values as numpy on every process (gathered across processes when the
  array spans them)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def agree(flag: bool) -> bool:
  """Process 0's flag, on every process (a collective: every process must call it)."""
  from jax.experimental import multihost_utils

  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def is_main_process() -> bool:
  """Whether this process writes files and logs (process 0)."""
  return jax.process_index() == 0
