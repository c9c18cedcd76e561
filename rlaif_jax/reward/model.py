"""Reward models: a decoder with a scalar head read at the last real token.

The objective scores both responses of each pair in one forward pass over a [2B, L] batch
and applies the soft-label cross-entropy (paper section 2.2.1). `RewardScorer` loads a
trained reward model and scores (input, response) texts; RL and evaluation share it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax import batched, losses, models, partitioning
from rlaif_jax.data import converters, encoder

STATS_FILE = "reward_stats.json"


def last_token_values(values: jax.Array, mask: jax.Array) -> jax.Array:
  """values [B, L] at each row's last True position of mask [B, L] (right padding). [B]."""
  last = jnp.maximum(jnp.sum(mask.astype(jnp.int32), axis=-1) - 1, 0)
  return jnp.take_along_axis(values, last[:, None], axis=-1)[:, 0]


def pair_rewards(model: models.Transformer, params, tokens: jax.Array, input_mask: jax.Array) -> jax.Array:
  """Rewards of both responses: tokens, input_mask [B, 2, L] -> [B, 2], one [2B, L] pass."""
  b, two, length = tokens.shape
  flat_t, flat_m = tokens.reshape(b * two, length), input_mask.reshape(b * two, length)
  hidden, _ = model.apply({"params": params}, flat_t, flat_m, method=models.Transformer.hidden_states)
  scores = model.apply({"params": params}, hidden, method=models.Transformer.scores)  # [2B, L]
  return last_token_values(scores, flat_m).reshape(b, two)


@dataclasses.dataclass(frozen=True)
class RewardObjective:
  """loss_fn(params, batch, rng) for the trainer; batch: tokens/input_mask [B, 2, L], p_a [B]."""

  model: models.Transformer
  label_smoothing: float = 0.0  # p -> p (1 - eps) + eps / 2

  def loss_fn(self, params, batch, rng):
    del rng
    r = pair_rewards(self.model, params, batch["tokens"], batch["input_mask"])
    p = batch["p_a"].astype(jnp.float32)
    p_train = p * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
    loss = losses.soft_label_rm_loss(r[:, 0], r[:, 1], p_train)
    prefers_a, decided = p > 0.5, (p != 0.5).astype(jnp.float32)
    correct = ((r[:, 0] > r[:, 1]) == prefers_a).astype(jnp.float32) * decided
    signed_margin = jnp.where(prefers_a, r[:, 0] - r[:, 1], r[:, 1] - r[:, 0])
    return loss, {
      "accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(decided), 1.0),
      "margin": jnp.mean(signed_margin),
      "reward_mean": jnp.mean(r),
      "reward_std": jnp.std(r),
      "weight": jnp.asarray(p.shape[0], jnp.float32),
    }


def init_from_lm(rm_model: models.Transformer, lm_params, rng) -> dict:
  """Reward-model parameters: the decoder's from lm_params (host or mesh arrays, kept as they
  are), a fresh (zero) scalar head as host arrays, the same on every process."""
  head = ("score_kernel", "score_bias")
  shapes = jax.eval_shape(lambda r: models.init_params(rm_model, r), rng)
  missing = set(shapes) - set(lm_params) - set(head)
  if missing:
    raise ValueError(f"the initial checkpoint lacks parameters {sorted(missing)}")
  # the head alone is computed (XLA drops the rest of the init): no second copy of the decoder
  fresh = jax.device_get(jax.jit(lambda r: {k: models.init_params(rm_model, r)[k] for k in head})(rng))
  return {**{k: v for k, v in lm_params.items() if k in shapes}, **fresh}


def reward_stats(rewards: np.ndarray) -> dict:
  """Normalization statistics saved beside a reward model's checkpoints."""
  rewards = np.asarray(rewards, np.float64)
  return {"mean": float(rewards.mean()), "std": float(rewards.std() + 1e-8), "count": int(rewards.size)}


class RewardScorer:
  """Scores (input, response) texts with a reward model, optionally normalized."""

  def __init__(
    self, model, params, vocab, *, max_len=512, batch_size=16, mesh=None, stats=None, rules=partitioning.DEFAULT_RULES
  ):
    self.model, self.vocab, self.max_len, self.batch_size = model, vocab, max_len, batch_size
    self.mesh = mesh or partitioning.make_mesh({"data": -1})
    self.rules, self.stats = rules, stats
    partitioning.check_batch_fits(batch_size, self.mesh, "scorer batch_size")
    self.params = models.place_params(model, params, self.mesh, rules)
    self._score = jax.jit(self._score_fn)

  @classmethod
  def from_workdir(cls, workdir: str, source: models.ModelSource, **kwargs) -> RewardScorer:
    """A scorer from a reward-model run folder (its checkpoints and reward_stats.json); source
    gives the architecture and vocabulary (its own checkpoint is replaced by the run's)."""
    mesh = kwargs.pop("mesh", None) or partitioning.make_mesh({"data": -1})
    rules = kwargs.get("rules", partitioning.DEFAULT_RULES)
    loaded = source.replace(checkpoint=os.path.join(workdir, "checkpoints")).load(mesh, rules, scalar_head=True)
    stats_path = os.path.join(workdir, STATS_FILE)
    stats = json.load(open(stats_path)) if os.path.exists(stats_path) else None
    return cls(loaded.model, loaded.params, loaded.vocab, mesh=mesh, stats=stats, **kwargs)

  def _score_fn(self, params, tokens, mask):
    hidden, _ = self.model.apply({"params": params}, tokens, mask, method=models.Transformer.hidden_states)
    scores = self.model.apply({"params": params}, hidden, method=models.Transformer.scores)
    return last_token_values(scores, mask)

  def score_tokens(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rewards of right-padded rows [N, L] (response ending in EOS). [N]."""
    fn = functools.partial(self._score, self.params)
    batches = batched.fixed_batches((tokens, mask), self.batch_size)
    return batched.run_batches(fn, batches, self.mesh, self.rules).astype(np.float32)

  def score(self, inputs: Sequence[str], responses: Sequence[str], normalize: bool = False) -> np.ndarray:
    """Rewards of texts, encoded and cut as in training (data.encoder). [N]."""
    examples = [encoder.example(self.vocab, i, targets=r) for i, r in zip(inputs, responses)]
    arrays, _ = converters.sft_features(examples, self.max_len, self.vocab.pad_id)
    rewards = self.score_tokens(arrays["tokens"], arrays["input_mask"])
    if normalize:
      if not self.stats:
        raise ValueError("normalized rewards need reward_stats.json beside the reward model's checkpoints")
      rewards = (rewards - self.stats["mean"]) / self.stats["std"]
    return rewards
