"""orbax checkpoints of a whole train state: save every N steps, keep the last K, resume.

Checkpoints are read only from directories the user names; orbax stores arrays with
tensorstore and metadata as JSON (no pickle).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def abstract_like(tree, shardings) -> Any:
  """ShapeDtypeStructs carrying the target shardings, for restoring straight into them."""
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
  """A thin wrapper over orbax's CheckpointManager for one state pytree."""

  def __init__(self, directory: str, save_every: int = 1000, keep: int | None = 3):
    self.directory = os.path.abspath(directory)
    self.save_every = max(1, save_every)
    # The interval is applied here: orbax's own policy would also save the first step.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, force: bool = False) -> bool:
    """Saves when step is on the interval (or force); returns whether it saved."""
    if not force and step % self.save_every:
      return False
    if step in self.manager.all_steps():
      return False
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, abstract_state, step: int | None = None):
    """Restores `step` (default: the latest) into the shapes and shardings of abstract_state."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint found in {self.directory}")
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_params(directory: str, abstract_params, step: int | None = None, key: str = "params"):
  """Restores only `key` (a model's parameters) of a saved train state into abstract_params'
  shapes and shardings, whatever topology it was saved on.

  directory is a trainer's checkpoints folder (e.g. runs/tiny_sft/checkpoints), given by the user;
  from an RL run's folder this loads the policy.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint found in {directory}")

    def restore(target):
      """The restored tree, or None when the checkpoint lacks some of target's arrays (a
      partial restore hands those back unfilled)."""
      restore_args = ocp.checkpoint_utils.construct_restore_args(target)
      args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
      try:
        out = manager.restore(step, args=args)[key]
      except (ValueError, KeyError):
        return None
      leaves = jax.tree_util.tree_leaves(out)
      return out if all(isinstance(x, jax.Array) for x in leaves) else None

    params = restore({key: abstract_params})
    if params is None:  # an RL run's state holds {"policy", "value"}: the policy is the model
      params = restore({key: {"policy": abstract_params}})
      params = None if params is None else params["policy"]
    if params is None:
      raise ValueError(
        f"checkpoint {directory} (step {step}) does not hold parameters of this model's shapes under {key!r} "
        "(another model config?)"
      )
    return params
  finally:
    manager.close()
