"""Model parameters on a mesh: their shardings, placing host arrays, reading trainer checkpoints."""

from __future__ import annotations

import flax.linen as nn
import jax

from rlaif_jax import partitioning
from rlaif_jax.checkpoints import abstract_like, load_params
from rlaif_jax.models.transformer import Transformer, init_params


def param_shardings(model: Transformer, mesh, rules=partitioning.DEFAULT_RULES):
  """(abstract parameters, their shardings) from the model's logical axes, computing nothing."""
  boxed = jax.eval_shape(lambda r: init_params(model, r, boxed=True), jax.random.PRNGKey(0))
  return nn.meta.unbox(boxed), nn.meta.unbox(partitioning.logical_shardings(boxed, mesh, rules))


def place_params(model: Transformer, params, mesh, rules=partitioning.DEFAULT_RULES):
  """Puts parameters on the mesh in the shardings their logical axes ask for."""
  return jax.device_put(params, param_shardings(model, mesh, rules)[1])


def load_model_params(
  model: Transformer, mesh, checkpoint=None, seed: int = 0, rules=partitioning.DEFAULT_RULES, step: int | None = None
):
  """Parameters from a trainer checkpoint folder (its `step`, default the latest), straight into
  their shardings; random (from seed) when checkpoint is None."""
  abstract, shardings = param_shardings(model, mesh, rules)
  if checkpoint is None:
    init = lambda r: init_params(model, r)  # noqa: E731
    return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))
  return load_params(checkpoint, abstract_like(abstract, shardings), step=step)
