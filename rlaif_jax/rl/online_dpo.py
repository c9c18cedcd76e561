"""Online AI feedback (OAIF, Guo et al. 2024): DPO or IPO on pairs the current policy samples and
the AI labeler labels, every iteration.

Over the shared rollout loop: each prompt gets two responses from the current policy (adjacent
rows), the scorer is the AI labeler comparing them (`scorers.PairwiseScorer`: both orders,
debiased soft P(A), returned as p_a for the first row and 1 - p_a for the second), and the
policy takes `losses.preference_loss` steps on them against the frozen SFT policy: the soft
label as each pair's target, no reward model and no value model. It is direct RLAIF in the
preference-optimization form: the labeler is queried on the policy's own samples, so its
feedback follows the policy as it moves (offline DPO reads a fixed set of pairs).

The KL to the SFT policy is DPO's beta (the implicit reward beta log(pi / pi_SFT)), not
RLConfig.kl_coef; the scorer's outputs are probabilities, so reward shaping must stay off.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from rlaif_jax import losses, models
from rlaif_jax.rl.groups import PolicyOnly, by_prompt
from rlaif_jax.rl.reinforce import (
  POLICY,
  RLConfig,
  rollout_metrics,
  rollout_token_stats,
  update_metrics,
  update_token_stats,
)

Array = jax.Array


def _pairs_of(token_logp, mask) -> Array:
  """Per-token log-probs [2B, T] of the rollout rows -> sequence log-probs [B, 2] of the pairs."""
  return by_prompt(jnp.sum(jnp.asarray(token_logp, jnp.float32) * mask, axis=-1), 2)


@dataclasses.dataclass(frozen=True)
class OnlineDpo(PolicyOnly):
  """DPO / IPO on two samples per prompt labeled by the scorer, trained alone (no value model).

  Batches hold tokens, input_mask [2B, P + N], response_mask [2B, N] and (for targets) reward
  [2B], the scorer's p_a and 1 - p_a of each pair; the prompt length P is static.
  """

  policy: models.Transformer
  prompt_len: int
  config: RLConfig = RLConfig()
  beta: float = 0.1
  loss: str = "dpo"  # or "ipo"
  samples_per_prompt: int = 2
  # what the run's summary follows: the pairwise scores are p and 1 - p (mean 0.5 whatever the
  # policy does); the implicit preference's agreement with the labeler on fresh samples says more
  progress_metric: ClassVar[str] = "rollout_accuracy"
  minibatch_by_prompt: ClassVar[bool] = True  # the loss reads both responses of a pair

  @property
  def method(self) -> str:
    return f"OAIF ({self.loss.upper()})"

  def __post_init__(self):
    if self.loss not in losses.PREFERENCE_LOSSES:
      raise ValueError(f"OnlineDpo.loss={self.loss!r}: one of {losses.PREFERENCE_LOSSES}")
    if not self.beta > 0:
      raise ValueError(f"OnlineDpo.beta={self.beta!r}: must be > 0")
    c = self.config
    if c.reward_normalization != "none" or c.reward_clip is not None or c.missing_eos_penalty or c.target_kl:
      raise ValueError(
        "OnlineDpo reads the scorer's outputs as preference probabilities and its KL strength is OnlineDpo.beta: "
        "set rl.RLConfig.reward_normalization='none', reward_clip=None, missing_eos_penalty=0.0 and target_kl=None"
      )

  @classmethod
  def build(
    cls, policy: models.Transformer, prompt_len: int, config: RLConfig = RLConfig(), beta: float = 0.1, loss="dpo"
  ) -> OnlineDpo:
    """The estimator for a policy model: two responses per prompt, DPO (or IPO) with strength beta."""
    return cls(policy, prompt_len, config, beta, loss)

  def targets(self, params, ref_params, batch, kl_coef):
    """The reference's sequence log-probs and each pair's label p_a, per row; rollout metrics
    (the sampled KL to SFT among them) and the label's spread."""
    del kl_coef
    logp, ref_logp, entropy, mask = rollout_token_stats(self.policy, params[POLICY], ref_params, batch, self.prompt_len)
    p_a = by_prompt(jnp.asarray(batch["reward"], jnp.float32), 2)[:, 0]
    _, metrics = losses.preference_loss(self.loss, _pairs_of(logp, mask), _pairs_of(ref_logp, mask), p_a, self.beta)
    metrics = rollout_metrics(logp, ref_logp, entropy, mask) | {
      "label_p_a_mean": jnp.mean(p_a),
      "label_confidence": jnp.mean(jnp.abs(2.0 * p_a - 1.0)),  # 0: the labeler could not tell the two apart
      "rollout_accuracy": metrics["accuracy"],  # the implicit preference vs the new labels, before the update
    }
    targets = {
      "old_logp": logp,
      "ref_sequence_logp": jnp.sum(ref_logp * mask, axis=-1),
      "p_a": jnp.repeat(p_a, 2),  # both rows of a pair carry its label
    }
    return targets, metrics

  def loss_fn(self, params, batch, rng):
    del rng
    logp, entropy, mask = update_token_stats(self.policy, params[POLICY], batch, self.prompt_len)
    ref = by_prompt(batch["ref_sequence_logp"], 2)
    p_a = by_prompt(batch["p_a"], 2)[:, 0]
    loss, metrics = losses.preference_loss(self.loss, _pairs_of(logp, mask), ref, p_a, self.beta)
    return loss, metrics | {
      **update_metrics(logp, entropy, batch["old_logp"], mask),
      "weight": jnp.float32(mask.shape[0] // 2),  # the loss is a mean over pairs
    }
