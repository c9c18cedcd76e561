"""One process of the two-process test: 4 CPU devices here, 8 in the global mesh.

Usage: python multihost_worker.py PROCESS_ID PORT OUT.npz
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")


def main(process_id: int, port: int, out: str) -> None:
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from rlaif_jax.main import initialize_distributed

  initialize_distributed(True, f"localhost:{port}", 2, process_id)
  assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4

  from rlaif_jax import records

  # The test holds <dir>/busy: both processes are refused alike (process 0 takes the lock and
  # tells the other), then both work under <dir>/free.
  folder = os.path.dirname(out)
  try:
    with records.workdir_lock(os.path.join(folder, "busy")):
      raise SystemExit("a held workdir was not refused")
  except records.WorkdirBusy as e:
    print(f"process {process_id} refused: {e}", flush=True)
  with records.workdir_lock(os.path.join(folder, "free")):
    train(out)
  jax.distributed.shutdown()


def train(out: str) -> None:
  import numpy as np
  from jax.experimental import multihost_utils
  from sft_helpers import comparable_optimizer, dataset, export_tiny, make_lora_trainer, make_trainer

  from rlaif_jax import partitioning

  mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  t = make_trainer(mesh, optimizer=comparable_optimizer())
  rng = jax.random.PRNGKey(0)
  state = t.init_state(rng)
  ds = dataset()
  losses = []
  for step in range(2):
    state, metrics = t.step(state, ds.batch(step), rng)  # each process loads only its rows
    losses.append(float(metrics["loss"]))
  flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
  gathered = {jax.tree_util.keystr(k): multihost_utils.process_allgather(v, tiled=True) for k, v in flat}
  # LoRA on the same mesh: adapters trained, the base an argument of the step
  lora_trainer, initial = make_lora_trainer(mesh)
  state = lora_trainer.init_state(rng, initial)
  for step in range(2):
    state, metrics = lora_trainer.step(state, ds.batch(step), rng)
    losses.append(float(metrics["loss"]))
  flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
  gathered |= {"lora" + jax.tree_util.keystr(k): multihost_utils.process_allgather(v, tiled=True) for k, v in flat}
  if jax.process_index() == 0:
    np.savez(out, losses=np.asarray(losses), **gathered)
  export_tiny(os.path.join(os.path.dirname(out), "hf"))


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
