"""Small builders shared by the trainer, sharding and multi-host tests."""

import functools

import jax
import numpy as np
import optax

import rlaif_jax.tasks  # noqa: F401
from rlaif_jax import data, models, optimizers, partitioning, trainer
from rlaif_jax.sft import SFTObjective

BATCH = 8
MAX_LEN = 96


def tiny_model():
  return models.Transformer(models.tiny(vocab_size=264, embed_dim=32, hidden_dim=64, num_layers=2, head_dim=8))


@functools.lru_cache
def _arrays(max_len):
  arrays, _ = data.task_arrays("tldr_sft", "train", "sft", max_len)
  return {k: v[:64] for k, v in arrays.items()}


def dataset(batch_size=BATCH, max_len=MAX_LEN):
  return data.ArrayDataset(_arrays(max_len), batch_size, seed=0)


def comparable_optimizer(lr=0.5):
  """For tests that compare parameters after a step across meshes, processes or accumulation:
  clipped SGD with momentum and weight decay moves parameters by lr times the gradient, so a
  1e-8 difference in a gradient (another reduction order, another machine's thread count) stays
  1e-8. Adam's first step divides by |g| and turns it into an lr-sized difference."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(0.01), optax.sgd(lr, momentum=0.9))


def make_trainer(mesh, accum_steps=1, lr=3e-3, optimizer=None):
  model = tiny_model()
  return trainer.Trainer(
    SFTObjective(model).loss_fn,
    functools.partial(models.init_params, model, boxed=True),
    optimizer or optimizers.adamw(lr, weight_decay=0.01, grad_clip_norm=1.0),
    mesh,
    partitioning.DEFAULT_RULES,
    accum_steps,
  )


def one_device_mesh():
  return partitioning.make_mesh({"data": 1}, jax.devices()[:1])


def to_numpy(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def make_lora_trainer(mesh, optimizer=None):
  """(trainer, initial params): rank-4 adapters on the tiny model's frozen random base, placed on
  mesh; the trainer's state holds the adapters, its steps read the base beside them."""
  loaded = models.ModelSource(config=tiny_model().config).load(mesh, lora=models.LoraConfig(4, 8.0))
  # adapters that already act (B != 0), so that the first step's gradient reaches A as well as B
  params = jax.tree_util.tree_map_with_path(
    lambda path, x: x + 0.05 if jax.tree_util.keystr(path).endswith("_lora_b']") else x, loaded.params
  )
  t = trainer.Trainer(
    SFTObjective(loaded.model).loss_fn,
    functools.partial(models.init_params, loaded.model, boxed=True),
    optimizer or comparable_optimizer(),
    mesh,
    frozen=loaded.frozen,
  )
  return t, params


def export_tiny(folder: str) -> None:
  """A tiny Llama-family Hugging Face folder in shards, from parameters sharded over every device (of
  every process: process 0 writes)."""
  from rlaif_jax import models
  from rlaif_jax.stages.export import run_export_hf

  run_export_hf(folder, models.ModelSource(config=models.tiny_llama(), seed=5), dtype="float32", max_shard_gb=0.0005)
