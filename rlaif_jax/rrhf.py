"""RRHF: rank k scored responses per input, plus SFT on the best (Yuan et al. 2023).

The objective computes the log-probabilities of all K responses of B inputs in one forward
pass over a [B*K, L] batch. `collect` gathers responses from several sources (policy samples
at several temperatures, other checkpoints, the dataset's own responses) and scores them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax import losses, models, partitioning, sampling
from rlaif_jax.checks import check_arguments
from rlaif_jax.data import converters, encoder
from rlaif_jax.generation import Generator, StopRule

Scorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]  # (inputs, responses) -> scores [N]


def response_token_logprobs(model, params, tokens, input_mask, response_mask):
  """log pi of each response token: tokens, masks [N, L] -> ([N, L-1] log-probs, [N, L-1] mask)."""
  return models.score_tokens(model, params, tokens, input_mask).logp, response_mask[:, 1:]


@dataclasses.dataclass(frozen=True)
class RRHFObjective:
  """batch: tokens, input_mask, response_mask [B, K, L]; scores, valid [B, K]."""

  model: models.Transformer
  sft_weight: float = 1.0

  def loss_fn(self, params, batch, rng):
    del rng
    b, k, length = batch["tokens"].shape
    flat = {key: batch[key].reshape(b * k, length) for key in ("tokens", "input_mask", "response_mask")}
    logp, mask = response_token_logprobs(self.model, params, flat["tokens"], flat["input_mask"], flat["response_mask"])
    logp, mask = logp.reshape(b, k, length - 1), mask.reshape(b, k, length - 1)
    seq = losses.sequence_logprob(logp, mask)  # [B, K]
    scores, valid = batch["scores"], batch["valid"]
    rank = losses.rrhf_rank_loss(seq, scores, valid)
    sft = losses.rrhf_sft_loss(logp, mask, scores, valid)
    pairs = (scores[:, :, None] < scores[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    ordered = jnp.sum(pairs & (seq[:, :, None] < seq[:, None, :])) / jnp.maximum(jnp.sum(pairs), 1)
    return rank + self.sft_weight * sft, {
      "rank_loss": rank,
      "sft_loss": sft,
      "ordered_fraction": ordered,
      "weight": jnp.asarray(b, jnp.float32),
    }


@dataclasses.dataclass(frozen=True)
class Sources:
  """Where the K responses per input come from."""

  policy_temperatures: tuple[float, ...] = (0.7, 1.0)  # one sample each from the current policy
  checkpoints: tuple[str, ...] = ()  # other policies (same model config), sampled at temperature 1
  dataset: bool = True  # the responses the dataset already has
  max_new_tokens: int = 64
  stop: StopRule = StopRule()  # where a sampled response ends: the task's rule (texts are never stripped)

  def __post_init__(self):
    check_arguments("Sources", {"max_new_tokens": self.max_new_tokens})
    for t in self.policy_temperatures:
      check_arguments("Sources", {"temperature": t})


class PolicySampler:
  """Responses of a policy to text prompts at a temperature, through `Generator` (fixed-shape
  batches, a key per batch; prompts cut from the left to leave room for max_new tokens)."""

  def __init__(self, model, vocab, max_new: int, max_len: int, batch_size: int = 8, mesh=None, stop=StopRule()):
    self.model, self.vocab, self.max_new, self.max_len, self.batch_size = model, vocab, max_new, max_len, batch_size
    self.stop = dataclasses.replace(stop, strip=False)  # the scorer reads responses as sampled
    self.mesh = mesh or partitioning.make_mesh({"data": 1}, jax.devices()[:1])
    self._generators: dict[float, Generator] = {}

  def __call__(self, params, prompts: Sequence[str], temperature: float, seed: int) -> list[str]:
    if temperature not in self._generators:
      config = sampling.SamplingConfig(self.max_new, temperature)
      self._generators[temperature] = Generator(
        self.model, self.vocab, config, batch_size=self.batch_size, max_prompt_len=self.max_len - self.max_new,
        stop=self.stop, mesh=self.mesh,
      )  # fmt: skip
    return [r["response"] for r in self._generators[temperature](params, prompts, seed)]


def collect(
  model,
  params,
  vocab,
  examples: Sequence[dict],
  sources: Sources,
  scorer: Scorer,
  max_len: int,
  seed: int,
  other_params: Sequence = (),
  sampler: PolicySampler | None = None,
) -> tuple[dict, dict]:
  """K scored responses per example {inputs, responses: [...]} -> (arrays, info).

  info holds the mean score of the current policy's own samples and the collected texts.
  sampler samples the policies (default: one device, batches of 8).
  """
  sample = sampler or PolicySampler(model, vocab, sources.max_new_tokens, max_len, stop=sources.stop)
  prompts = [ex["inputs"] for ex in examples]
  columns, names = [], []
  for t_i, temperature in enumerate(sources.policy_temperatures):
    columns.append(sample(params, prompts, temperature, seed + 101 * t_i))
    names.append(f"policy_t{temperature}")
  for c_i, p in enumerate(other_params):
    columns.append(sample(p, prompts, 1.0, seed + 7 * c_i + 3))
    names.append(f"checkpoint{c_i}")
  if sources.dataset:
    width = max(len(ex.get("responses", [])) for ex in examples)
    for d in range(width):
      columns.append([ex["responses"][d] if d < len(ex.get("responses", [])) else None for ex in examples])
      names.append(f"dataset{d}")
  if not columns:
    raise ValueError("RRHF needs at least one response source")
  k = len(columns)
  flat_in = [prompts[i] for c in columns for i in range(len(prompts)) if c[i] is not None]
  flat_out = [c[i] for c in columns for i in range(len(prompts)) if c[i] is not None]
  flat_scores = iter(np.asarray(scorer(flat_in, flat_out), np.float32))
  scores = np.zeros((len(prompts), k), np.float32)
  for j, c in enumerate(columns):
    for i in range(len(prompts)):
      if c[i] is not None:
        scores[i, j] = next(flat_scores)
  keys = [f"r{j}" for j in range(k)]
  tokenized = [
    encoder.example(vocab, prompts[i], **{key: c[i] for key, c in zip(keys, columns)}) for i in range(len(prompts))
  ]
  arrays, stats = converters.responses_features(tokenized, max_len, keys, vocab.pad_id)
  arrays["scores"] = scores
  del arrays["human_choice"]
  own = [j for j, n in enumerate(names) if n.startswith("policy")]
  dataset = [
    scores[i, j]
    for j, n in enumerate(names)
    if n.startswith("dataset")
    for i in range(len(prompts))
    if arrays["valid"][i, j]
  ]
  info = {
    "sources": names,
    "policy_score": float(scores[:, own].mean()) if own else None,
    "dataset_score": float(np.mean(dataset)) if dataset else None,  # None, not NaN, for prompts alone
    "texts": columns,
    **stats,
  }
  return arrays, info


def ordering(model, params, arrays: dict, batch_size: int = 8) -> float:
  """Fraction of scored pairs (s_i < s_j) whose length-normalized log-probs are ordered alike,
  batch_size inputs (each with its k responses) at a time: the run's own batch size, whose
  activations the run already fits."""
  objective = RRHFObjective(model)
  fn = jax.jit(lambda p, b: objective.loss_fn(p, b, None)[1])
  agree = total = 0.0
  keys = ("tokens", "input_mask", "response_mask", "scores", "valid")
  for start in range(0, len(arrays["tokens"]), batch_size):
    batch = {k: arrays[k][start : start + batch_size] for k in keys}
    s, v = batch["scores"], batch["valid"]
    n_pairs = float(np.sum((s[:, :, None] < s[:, None, :]) & v[:, :, None] & v[:, None, :]))
    agree += float(fn(params, batch)["ordered_fraction"]) * n_pairs
    total += n_pairs
  return agree / max(total, 1.0)
