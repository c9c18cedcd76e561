"""The same SFT steps on 8 forced CPU devices, under several meshes, equal one device's (losses,
and parameters after clipped SGD steps: comparable_optimizer says why not Adam)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from sft_helpers import comparable_optimizer, dataset, make_trainer, one_device_mesh, to_numpy

from rlaif_jax import partitioning

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
