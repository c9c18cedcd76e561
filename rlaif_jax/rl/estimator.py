"""The Estimator protocol: everything the rollout loop (rl/loop.py), the trainer and the `rl`
stage read of an RL estimator. A new estimator is one module whose class subclasses Estimator
(directly, or through PolicyOnly or PolicyAndValue, which provide the parameters and optimizer),
one gin file naming its `build` as run_rl.estimator, and its tests; nothing else changes.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import jax
import optax

Array = jax.Array


class Estimator(Protocol):
  """An RL estimator over the shared rollout loop: sample samples_per_prompt responses per prompt,
  score them, `targets` on the rollout batch, then `loss_fn` steps over it.

  Subclasses are frozen dataclasses with a classmethod
  `build(policy, prompt_len, config, **its_own_settings)` that gin binds as run_rl.estimator.
  """

  samples_per_prompt: int  # K responses per prompt (1: REINFORCE, PPO; >= 2: RLOO, GRPO; 2: OAIF)
  # The metric the run's summary follows (reward_first/last); the scorer's raw reward by default.
  progress_metric: ClassVar[str] = "reward_raw_mean"
  # Whether update minibatches must keep each prompt's K responses together (a pairwise loss).
  minibatch_by_prompt: ClassVar[bool] = False

  @property
  def method(self) -> str:
    """The estimator as reports name it (RL, PPO, RLOO, GRPO, OAIF (DPO), ...)."""
    ...

  def init_params(self, rng: Array) -> dict:
    """Boxed parameters of the trained models (shapes and logical axes for the trainer)."""
    ...

  def initial_params(self, ref_params, rng: Array) -> dict:
    """The trained parameters at step 0, from the reference (SFT) policy's."""
    ...

  def optimizer(self, policy: optax.GradientTransformation, value: optax.GradientTransformation):
    """One optimizer over the trained parameters (the value optimizer where there is a value model)."""
    ...

  def targets(self, params, ref_params, batch: dict, kl_coef) -> tuple[dict, dict]:
    """On a scored rollout batch: what loss_fn reads besides it (old and reference log-probs,
    advantages, ...) and rollout metrics (with "kl", which the adaptive KL controller reads)."""
    ...

  def loss_fn(self, params, batch: dict, rng: Array) -> tuple[Array, dict]:
    """The update step's loss and metrics (with "weight", what the trainer averages by)."""
    ...
