"""What the value-free estimators that sample K responses per prompt share (RLOO, GRPO).

The rollout loop puts the K responses of a prompt in adjacent rows (`np.repeat(idx, K)`), so
a rollout batch of B * K rows is viewed as [B, K] by a reshape. These estimators train the
policy alone: their parameters are {"policy"} and their optimizer is the policy's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlaif_jax import models
from rlaif_jax.rl.estimator import Estimator
from rlaif_jax.rl.reinforce import POLICY

Array = jax.Array


def check_group_size(name: str, samples_per_prompt: int) -> None:
  """A ValueError naming the setting unless K is an integer >= 2: a group of one has no
  baseline (its advantage would always be 0)."""
  k = samples_per_prompt
  if isinstance(k, bool) or not isinstance(k, int) or k < 2:
    raise ValueError(f"{name}.samples_per_prompt={k!r}: needs K >= 2 responses per prompt to compare")


def by_prompt(x: Array, k: int) -> Array:
  """[B * K] -> [B, K]: the K responses of each prompt in one row."""
  return jnp.reshape(x, (-1, k))


def group_reward_std(rewards: Array, k: int) -> Array:
  """Mean over prompts of the standard deviation of their K rewards: 0 when every group's
  responses score alike, so no response has an advantage over its siblings."""
  return jnp.mean(jnp.std(by_prompt(jnp.asarray(rewards, jnp.float32), k), axis=-1))


class PolicyOnly(Estimator):
  """The parameters and optimizer of an estimator that trains the policy alone (no value
  model); the subclass has a `policy` field (a models.Transformer)."""

  def init_params(self, rng) -> dict:
    """Boxed parameters of the trained model (shapes and logical axes for the trainer)."""
    return {POLICY: models.init_params(self.policy, rng, boxed=True)}

  def initial_params(self, ref_params, rng) -> dict:
    """The policy starts as the reference (SFT) policy."""
    del rng
    return {POLICY: ref_params}

  def optimizer(self, policy: optax.GradientTransformation, value: optax.GradientTransformation):
    """The policy's optimizer over {"policy": ...}; the value optimizer is unused."""
    del value
    return policy
