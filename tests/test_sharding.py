"""The same SFT steps on 8 forced CPU devices, under several meshes, equal one device's (losses,
and parameters after clipped SGD steps: comparable_optimizer says why not Adam)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from sft_helpers import comparable_optimizer, dataset, make_trainer, one_device_mesh, to_numpy

from rlaif_jax import partitioning

pytestmark = pytest.mark.slow  # sharded steps on 8 host devices against one device, and a subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MESHES = [
  {"data": 8},
  {"fsdp": 8},
  {"data": 2, "tensor": 4},
  {"data": 2, "fsdp": 2, "tensor": 2},
]


@pytest.fixture(scope="module")
def reference():
  assert jax.device_count() == 8
  batch = dataset().global_batch(0)
  t = make_trainer(one_device_mesh(), optimizer=comparable_optimizer())
  rng = jax.random.PRNGKey(0)
  state = t.init_state(rng)
  init = to_numpy(state.params)
  state, metrics = t.step(state, batch, rng)
  state, metrics2 = t.step(state, dataset().global_batch(1), rng)
  return batch, init, [float(metrics["loss"]), float(metrics2["loss"])], to_numpy(state.params)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_sharded_step_equals_single_device(shape, reference):
  batch, init_ref, losses_ref, params_ref = reference
  mesh = partitioning.make_mesh(shape)
  t = make_trainer(mesh, optimizer=comparable_optimizer())
  rng = jax.random.PRNGKey(0)
  state = t.init_state(rng)
  jax.tree_util.tree_map(np.testing.assert_array_equal, to_numpy(state.params), init_ref)
  state, metrics = t.step(state, batch, rng)
  state, metrics2 = t.step(state, dataset().global_batch(1), rng)
  np.testing.assert_allclose([float(metrics["loss"]), float(metrics2["loss"])], losses_ref, rtol=1e-5)
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), to_numpy(state.params), params_ref
  )
  # Parameters really are split as the rules say.
  gate = state.params["blocks_0"]["mlp"]["gate"]  # [embed, mlp] = [32, 64]
  assert gate.sharding.spec == PartitionSpec("fsdp", "tensor")
  assert gate.sharding.shard_shape(gate.shape) == (32 // mesh.shape["fsdp"], 64 // mesh.shape["tensor"])
  mu = state.opt_state[2][0].trace["blocks_0"]["mlp"]["gate"]  # optimizer moments follow their parameters
  assert mu.sharding.spec == gate.sharding.spec


def test_mesh_and_batch_errors_name_the_setting():
  with pytest.raises(ValueError, match="needs 16 devices"):
    partitioning.make_mesh({"data": 2, "tensor": 8})
  with pytest.raises(ValueError, match="batch_size=6 is not divisible"):
    partitioning.check_batch_fits(6, partitioning.make_mesh({"data": 4, "tensor": 2}))
  with pytest.raises(ValueError, match="unknown axes"):
    partitioning.make_mesh({"model": 8})


def test_the_embedding_lookup_partitions_without_replicating():
  """On a data x fsdp x tensor mesh the token lookup (and its gradient) compiles without XLA's
  "involuntary full rematerialization" (replicating a tensor to move it between shardings). In a
  process of its own: the harness's TF_CPP_MIN_LOG_LEVEL would hide XLA's warning."""
  code = """
import functools
import jax, numpy as np
from rlaif_jax import models, optimizers, partitioning, trainer
from rlaif_jax.sft import SFTObjective
model = models.Transformer(models.preset("tiny"))
mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
init = functools.partial(models.init_params, model, boxed=True)
t = trainer.Trainer(SFTObjective(model).loss_fn, init, optimizers.adamw(1e-4), mesh)
tokens = np.random.default_rng(0).integers(3, 259, (8, 64)).astype(np.int32)
ones = np.ones((8, 64), bool)
batch = partitioning.shard_batch({"tokens": tokens, "input_mask": ones, "loss_mask": ones}, mesh)
rng = jax.random.PRNGKey(0)
with partitioning.axis_rules(mesh):
  t.compiled_step(batch).lower(t.init_state(rng), batch, rng).compile()
print("compiled")
"""
  # without the harness's log level, and compiling for itself: a program read from the compilation
  # cache would print no warning
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "JAX_COMPILATION_CACHE_DIR")}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-2000:]
  assert "Involuntary full rematerialization" not in out.stderr
