"""Scorers: (inputs, responses) -> one reward per response, for RL, RRHF and evaluation.

A scorer is anything callable as `scorer(inputs, responses) -> np.ndarray [N]` on the host;
the classes here are the ones the pipeline configures from gin:

- `RewardModelScorer`: a trained reward model (distilled RLAIF on AI labels, RLHF on human ones);
- `DirectScorer`: the AI labeler's 1-10 rating mapped to [-1, 1] (direct RLAIF);
- `PairwiseScorer`: the AI labeler's soft preference between the two responses sampled for each
  prompt, both orders (online AI feedback);
- `HumanScorer`: the dataset's own human preferences, for the responses the dataset has.

Their models load when a stage calls `prepare(scorer, context)` with its mesh, lengths and
policy, so a gin file names a scorer without knowing the mesh. Batching and multi-host
placement happen inside (through `batched.run_batches`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from rlaif_jax import models, partitioning, reward
from rlaif_jax.labeling import Labeler, PromptConfig


class Scorer(Protocol):
  def __call__(self, inputs: Sequence[str], responses: Sequence[str]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class ScoringContext:
  """What a stage tells its scorer: where to run and the policy it scores."""

  mesh: Any
  max_len: int  # prompt + response tokens
  policy: models.ModelSource  # the default architecture and vocabulary of scoring models
  examples: Sequence[dict] = ()  # the stage's examples {inputs, responses, human_scores}
  stage: str = "stage"  # the stage's gin name, for messages
  rules: Any = partitioning.DEFAULT_RULES


def prepare(scorer: Callable, context: ScoringContext) -> Scorer:
  """The scorer ready to call: its models loaded on context.mesh (plain functions as given)."""
  setup = getattr(scorer, "setup", None)
  if setup is not None:
    setup(context)
  return scorer


def _batch_size(context: ScoringContext, per_device: int) -> int:
  return partitioning.data_parallel_size(context.mesh) * per_device


@dataclasses.dataclass
class RewardModelScorer:
  """Rewards from a reward-model run folder (its checkpoints and reward_stats.json)."""

  workdir: str | None = None
  normalize: bool = False  # standardize with the statistics saved beside the reward model
  model: models.ModelSource | None = None  # architecture and vocabulary; default: the policy's
  batch_per_device: int = 4
  _rm: Any = dataclasses.field(default=None, repr=False)

  def setup(self, context: ScoringContext) -> None:
    if not self.workdir:
      raise ValueError(f"{context.stage}: RewardModelScorer.workdir is not set (a reward-model run folder)")
    self._rm = reward.RewardScorer.from_workdir(
      self.workdir,
      self.model or context.policy,
      max_len=context.max_len,
      batch_size=_batch_size(context, self.batch_per_device),
      mesh=context.mesh,
      rules=context.rules,
    )

  def __call__(self, inputs: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    if self._rm is None:
      raise RuntimeError("RewardModelScorer: call scorers.prepare(scorer, context) first")
    return self._rm.score(inputs, responses, normalize=self.normalize)


@dataclasses.dataclass
class DirectScorer:
  """Direct RLAIF: the labeler's expected 1-10 score of each response, mapped to [-1, 1]."""

  labeler: models.ModelSource | None = None  # default: the policy source without its checkpoint
  task: str = "summarization"  # the labeling task whose rating prompt is shown
  min_len: int = 512  # the rating prompt adds a preamble to the context and response
  batch_per_device: int = 4
  _labeler: Any = dataclasses.field(default=None, repr=False)

  def setup(self, context: ScoringContext) -> None:
    self._labeler = _load_labeler(self.labeler, context, self.min_len, self.batch_per_device)

  def __call__(self, inputs: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    if self._labeler is None:
      raise RuntimeError("DirectScorer: call scorers.prepare(scorer, context) first")
    return self._labeler.direct_scores(self.task, inputs, responses)


def _load_labeler(source: models.ModelSource | None, context: ScoringContext, min_len: int, per_device: int):
  """The AI labeler of a scorer: source, or by default the policy source's base model."""
  return Labeler.from_source(
    source or context.policy.replace(checkpoint=None),
    context.mesh,
    name="labeler",
    max_len=max(context.max_len, min_len),
    batch_size=_batch_size(context, per_device),
    rules=context.rules,
  )


@dataclasses.dataclass
class PairwiseScorer:
  """Online AI feedback: rows 2i and 2i + 1 are two responses to the same prompt; the labeler
  gives P(A = row 2i preferred), shown in both orders and debiased (the label stage's
  `Labeler.label_pairs`), and the scores are p_a for row 2i and 1 - p_a for row 2i + 1. A pair
  the labeler cannot show within its max_len scores 0.5 and 0.5 (no preference) and is counted.
  After each call `last_details` holds one dict per pair (p1_ab, p1_ba, and error if any)."""

  labeler: models.ModelSource | None = None  # default: the policy source without its checkpoint
  prompt_config: PromptConfig = PromptConfig(task="summarization")
  min_len: int = 1024  # the pair prompt shows the context and both responses
  batch_per_device: int = 4
  unlabeled: int = 0  # pairs scored 0.5 because they did not fit, over this scorer's life
  last_details: list = dataclasses.field(default_factory=list, repr=False)
  _labeler: Any = dataclasses.field(default=None, repr=False)

  def setup(self, context: ScoringContext) -> None:
    self._labeler = _load_labeler(self.labeler, context, self.min_len, self.batch_per_device)

  def __call__(self, inputs: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    if self._labeler is None:
      raise RuntimeError("PairwiseScorer: call scorers.prepare(scorer, context) first")
    if len(inputs) % 2 or any(inputs[i] != inputs[i + 1] for i in range(0, len(inputs), 2)):
      raise ValueError("PairwiseScorer scores two responses per prompt in adjacent rows (samples_per_prompt=2)")
    pairs = [
      {"id": str(i), "inputs": inputs[2 * i], "response_a": responses[2 * i], "response_b": responses[2 * i + 1]}
      for i in range(len(inputs) // 2)
    ]
    labeled = self._labeler.label_pairs(pairs, self.prompt_config)
    p_a = np.asarray([0.5 if r["p_a"] is None else r["p_a"] for r in labeled], np.float32)
    self.unlabeled += sum(r["p_a"] is None for r in labeled)
    keep = ("p1_ab", "p1_ba", "error")
    self.last_details = [{k: r[k] for k in keep if r.get(k) is not None} for r in labeled]
    return np.stack([p_a, 1.0 - p_a], axis=1).reshape(-1)


@dataclasses.dataclass
class HumanScorer:
  """The dataset's human preferences: 1 for the preferred response of a pair, 0 for the other.
  Scores only responses the dataset holds, so it cannot rate new samples."""

  _table: dict = dataclasses.field(default_factory=dict, repr=False)
  _stage: str = "stage"

  def setup(self, context: ScoringContext) -> None:
    self._stage = context.stage
    self._table = {
      (ex["inputs"], r): s
      for ex in context.examples
      if ex["human_scores"]
      for r, s in zip(ex["responses"], ex["human_scores"])
    }

  def __call__(self, inputs: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    if any(key not in self._table for key in zip(inputs, responses)):
      raise ValueError(
        f"{self._stage}: HumanScorer scores only the dataset's ranked responses; set sources.policy_temperatures=()"
      )
    return np.asarray([self._table[key] for key in zip(inputs, responses)], np.float32)


def source_of(scorer: Callable, policy: models.ModelSource) -> str:
  """Where a scorer's rewards come from, comparable with ModelSource.identity: a reward model's
  checkpoints, the direct scorer's labeler (the policy's base model by default), or "human"."""
  if isinstance(scorer, RewardModelScorer):
    from rlaif_jax.checkpoints import step_identity

    return "checkpoint:" + step_identity(os.path.join(scorer.workdir or "", "checkpoints"))
  if isinstance(scorer, (DirectScorer, PairwiseScorer)):
    return (scorer.labeler or policy.replace(checkpoint=None)).identity
  if isinstance(scorer, HumanScorer):
    return "human"
  return getattr(scorer, "__qualname__", type(scorer).__qualname__)
