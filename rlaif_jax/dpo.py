"""Preference optimization on labeled pairs: DPO and IPO with per-example soft AI labels.

DPO (Rafailov et al. 2023) trains the policy on pairs directly, with the implicit reward
beta * log(pi(y | x) / pi_SFT(y | x)) in the soft-label loss the reward model uses (paper section
2.2.1): no reward model, no sampling. The labeler's soft P(A) is each pair's target as it is
(`losses.soft_dpo_loss`); hard labels and conservative DPO are special cases; IPO (Azar et al.
2023) is the squared form (`losses.soft_ipo_loss`).

A pair's two sequence log-probabilities come from one [2B, L] pass of the policy; the frozen
reference's are computed once, before training, in the same layout (`PairLogprobs`),
and travel with the batches. `SampledKL` measures the policy's KL to the reference on its own
samples (the DPO loss constrains it only implicitly).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax import batched, data, losses, models, partitioning, rl, sampling
from rlaif_jax.generation import Generator, StopRule
from rlaif_jax.rrhf import response_token_logprobs


def pair_logprobs(model: models.Transformer, params, tokens, input_mask, response_mask) -> jax.Array:
  """Sequence log-probabilities log pi(y | x) of both responses of each pair: tokens, masks
  [B, 2, L] (context then response, right-padded) -> [B, 2] float32, one [2B, L] pass."""
  b, two, length = tokens.shape
  flat = lambda x: x.reshape(b * two, length)  # noqa: E731
  logp, mask = response_token_logprobs(model, params, flat(tokens), flat(input_mask), flat(response_mask))
  return jnp.sum(logp.astype(jnp.float32) * mask.astype(jnp.float32), axis=-1).reshape(b, two)


@dataclasses.dataclass(frozen=True)
class DpoObjective:
  """loss_fn(params, batch, rng) for the trainer; batch: tokens, input_mask, response_mask
  [B, 2, L], ref_logp [B, 2] (the reference's pair_logprobs), p_a [B] (the soft label)."""

  model: models.Transformer
  beta: float = 0.1
  loss: str = "dpo"  # or "ipo"

  def __post_init__(self):
    if self.loss not in losses.PREFERENCE_LOSSES:
      raise ValueError(f"loss={self.loss!r}: one of {losses.PREFERENCE_LOSSES}")
    if not self.beta > 0:
      raise ValueError(f"beta={self.beta!r}: must be > 0")

  def loss_fn(self, params, batch, rng):
    del rng
    logp = pair_logprobs(self.model, params, batch["tokens"], batch["input_mask"], batch["response_mask"])
    loss, metrics = losses.preference_loss(self.loss, logp, batch["ref_logp"], batch["p_a"], self.beta)
    return loss, metrics | {"weight": jnp.asarray(logp.shape[0], jnp.float32)}


class PairLogprobs:
  """(params, arrays) -> pair_logprobs of every pair [N, 2] (float32, on the host), in batches of
  batch_size rows (the last one padded); compiled once for all the parameters it is given (the
  frozen reference's before training, the policy's at each evaluation)."""

  def __init__(self, model: models.Transformer, batch_size: int, mesh, rules):
    self.batch_size, self.mesh, self.rules = batch_size, mesh, rules
    self._fn = jax.jit(functools.partial(pair_logprobs, model))

  def __call__(self, params, arrays: dict) -> np.ndarray:
    keys = ("tokens", "input_mask", "response_mask")
    batches = batched.fixed_batches(tuple(arrays[k] for k in keys), self.batch_size)
    return batched.run_batches(functools.partial(self._fn, params), batches, self.mesh, self.rules).astype(np.float32)


class SampledKL:
  """KL(pi || pi_ref) on the policy's own samples: the mean over responses sampled at
  temperature 1 to fixed prompts of sum_t (log pi - log pi_ref) (`rl.sequence_kl`), the
  estimate RL's curves show. `__call__(params)` -> float; the same seed every call."""

  def __init__(self, model, vocab, ref_params, prompts, max_new_tokens, max_prompt_len, mesh, rules, stop, seed=0):
    self.ref_params, self.seed = ref_params, seed
    config = sampling.SamplingConfig(max_new_tokens, temperature=1.0)
    stop = dataclasses.replace(stop or StopRule(), strip=False)
    self.generator = Generator(
      model, vocab, config, batch_size=len(prompts), max_prompt_len=max_prompt_len, stop=stop, mesh=mesh, rules=rules
    )
    self.prompts = self.generator.pad_prompts([data.encoder.context(vocab, p) for p in prompts])
    self.mesh, self.rules, self.max_prompt_len = mesh, rules, max_prompt_len
    self._kl = jax.jit(functools.partial(self._sequence_kl, model))

  def _sequence_kl(self, model, params, ref_params, batch):
    logp, ref_logp, _, mask = rl.rollout_token_stats(model, params, ref_params, batch, self.max_prompt_len)
    return rl.sequence_kl(logp, ref_logp, mask)

  def __call__(self, params) -> float:
    p_tokens, p_mask = self.prompts
    out = self.generator.sample_arrays(params, p_tokens, p_mask, jax.random.PRNGKey(self.seed))
    batch = {
      "tokens": np.concatenate([p_tokens, out.tokens], axis=1),
      "input_mask": np.concatenate([p_mask, out.mask], axis=1),
      "response_mask": out.mask,
    }
    with partitioning.axis_rules(self.mesh, self.rules):
      kl = self._kl(params, self.ref_params, partitioning.put_batch(batch, self.mesh, self.rules))
    return float(np.mean(partitioning.to_host(kl)))


__all__ = ["DpoObjective", "PairLogprobs", "SampledKL", "pair_logprobs"]
