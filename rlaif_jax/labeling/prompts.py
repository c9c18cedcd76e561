"""Labeling prompts: preambles, few-shot exemplars, chain-of-thought, direct 1-10 scoring.

A prompt is rendered as three parts, prefix + context + suffix, so that an overlong prompt is
cut from the left of the context only: never the preamble's instructions, the responses, or
the ending cue. The wording is this project's own, following the paper's description (base:
"which is better?"; detailed: the rating instructions a human rater would get).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

from rlaif_jax.data import encoder

TASKS = ("summarization", "helpfulness", "harmlessness")

PREAMBLES = {
  ("summarization", "base"): "Which of the following summaries does a better job of summarizing the most important "
  "points in the given forum post?",
  ("summarization", "detailed"): "A good summary is a shorter piece of text that keeps the essence of the original. "
  "It tries to say what the original says, but with fewer words.\n"
  "Rate each summary on four qualities:\n"
  "- Coherence: it reads well on its own and is easy to understand.\n"
  "- Accuracy: it states only what the post says, without adding or distorting facts.\n"
  "- Coverage: it keeps the post's most important points and leaves out the minor ones.\n"
  "- Overall quality: how well it does all of the above, for someone who has not read the post.\n"
  "You are given a post and two of its possible summaries. Output 1 or 2 to say which summary is better.",
  ("helpfulness", "base"): "Which of the following responses is more helpful to the person in the conversation?",
  ("helpfulness", "detailed"): "A helpful response answers what the person actually asked, is accurate, stays on "
  "topic, and gives enough detail to act on without padding. It asks for clarification when the request is "
  "ambiguous and says so when it does not know.\n"
  "You are given a conversation and two possible next responses from the assistant. Output 1 or 2 to say which "
  "response is more helpful.",
  ("harmlessness", "base"): "Which of the following responses is less harmful?",
  ("harmlessness", "detailed"): "A harmless response does not help anyone cause harm to themselves or others, does "
  "not encourage illegal, unethical or dangerous acts, and is not rude, offensive or demeaning. When a request is "
  "harmful, a good response declines politely and, where it can, points to a safe alternative.\n"
  "You are given a conversation and two possible next responses from the assistant. Output 1 or 2 to say which "
  "response is less harmful.",
}

COT_REQUESTS = {
  "summarization": "Consider the coherence, accuracy, coverage, and overall quality of each summary and explain "
  "which one is better.\n\nRationale:",
  "helpfulness": "Consider how well each response answers the request, how accurate and relevant it is, and explain "
  "which one is more helpful.\n\nRationale:",
  "harmlessness": "Consider whether either response could lead to harm, encourages unsafe or unethical acts, or is "
  "offensive, and explain which one is less harmful.\n\nRationale:",
}

DIRECT_PREAMBLES = {
  "summarization": "Rate the summary of the forum post from 1 (poor) to 10 (excellent) for its coherence, accuracy "
  "and coverage of the post's most important points.",
  "helpfulness": "Rate how helpful the assistant's response is from 1 (not helpful) to 10 (very helpful).",
  "harmlessness": "Rate how harmless the assistant's response is from 1 (very harmful) to 10 (completely harmless).",
}


def _labels(task: str) -> tuple[str, str]:
  """(what the context is called, what a response is called)."""
  return ("Text", "Summary") if task == "summarization" else ("Conversation", "Response")


def ending(task: str) -> str:
  return f"Preferred {_labels(task)[1]}="


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """One prompting technique of the paper (section 2.1); `name` identifies it in outputs."""

  task: str = "summarization"  # summarization | helpfulness | harmlessness
  preamble: str = "detailed"  # base | detailed
  num_exemplars: int = 0  # few-shot exemplars placed before the sample
  exemplar_rationales: bool = False  # exemplars show a rationale before their answer
  chain_of_thought: bool = False  # decode a rationale first, then score with it in the prompt
  self_consistency: int = 1  # rationales sampled at cot_temperature and averaged (needs chain_of_thought)
  cot_temperature: float = 0.0  # 0 is greedy; self-consistency needs > 0
  max_rationale_tokens: int = 128
  both_orders: bool = True  # position-bias mitigation: score (A, B) and (B, A) and average
  custom_preamble: str | None = None  # replaces the task's preamble (e.g. for synthetic tasks)

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"PromptConfig.task={self.task!r}; tasks: {TASKS}")
    if self.preamble not in ("base", "detailed"):
      raise ValueError(f"PromptConfig.preamble={self.preamble!r}; use 'base' or 'detailed'")
    if not 0 <= self.cot_temperature < float("inf"):
      raise ValueError(f"PromptConfig.cot_temperature={self.cot_temperature!r}: must be a number >= 0 (0 is greedy)")
    if self.self_consistency > 1 and (not self.chain_of_thought or self.cot_temperature <= 0):
      raise ValueError("PromptConfig.self_consistency > 1 needs chain_of_thought=True and cot_temperature > 0")

  @property
  def name(self) -> str:
    parts = [self.task, self.preamble if self.custom_preamble is None else "custom", f"{self.num_exemplars}shot"]
    if self.num_exemplars and self.exemplar_rationales:
      parts.append("rationales")
    if self.chain_of_thought:
      parts.append("cot" if self.self_consistency == 1 else f"cot-sc{self.self_consistency}")
    if not self.both_orders:
      parts.append("one-order")
    return "+".join(parts)

  @property
  def preamble_text(self) -> str:
    return self.custom_preamble if self.custom_preamble is not None else PREAMBLES[(self.task, self.preamble)]


class Exemplar(NamedTuple):
  input: str
  response_1: str
  response_2: str
  preferred: int  # 1 or 2
  rationale: str = ""


class PromptParts(NamedTuple):
  prefix: str  # kept whole
  context: str  # cut from the left when the prompt is too long
  suffix: str  # kept whole (responses and the ending)

  @property
  def text(self) -> str:
    return self.prefix + self.context + self.suffix


def load_exemplars(path: str, task: str) -> list[Exemplar]:
  """Exemplars of `task` from a jsonl file {task, input, response_1, response_2, preferred, rationale?}."""
  from rlaif_jax.data.io import FieldError, read_records, require_str

  def parse(obj, where):
    if obj.get("task") != task:
      return None
    preferred = obj.get("preferred")
    if preferred not in (1, 2):
      raise FieldError("preferred", f"expected 1 or 2, got {preferred!r}")
    return {
      "exemplar": Exemplar(
        require_str(obj, "input"),
        require_str(obj, "response_1"),
        require_str(obj, "response_2"),
        preferred,
        obj.get("rationale") or "",
      )
    }

  records, _ = read_records(path, parse)
  return [r["exemplar"] for r in records]


def _sample_block(task: str, context: str, r1: str, r2: str) -> tuple[str, str, str]:
  ctx_label, resp_label = _labels(task)
  return f"{ctx_label} - ", context, f"\n{resp_label} 1 - {r1.strip()}\n{resp_label} 2 - {r2.strip()}\n\n"


def _exemplar_text(config: PromptConfig, ex: Exemplar) -> str:
  head, ctx, tail = _sample_block(config.task, ex.input, ex.response_1, ex.response_2)
  rationale = f"Rationale: {ex.rationale.strip()}\n" if config.exemplar_rationales and ex.rationale else ""
  return f"{head}{ctx}{tail}{rationale}{ending(config.task)}{ex.preferred}\n\n"


def choose_exemplars(exemplars: Sequence[Exemplar], k: int, current_input: str) -> list[Exemplar]:
  """The first k exemplars, in file order, never the pair being labeled."""
  chosen = [e for e in exemplars if e.input.strip() != current_input.strip()][:k]
  if len(chosen) < k:
    raise ValueError(f"asked for {k} exemplars but only {len(chosen)} are available for this task")
  return chosen


def pair_prompt(
  config: PromptConfig, context: str, first: str, second: str, exemplars: Sequence[Exemplar] = (), cot: bool = False
) -> PromptParts:
  """The labeling prompt showing `first` as 1 and `second` as 2; with cot, it asks for a rationale."""
  shots = "".join(_exemplar_text(config, e) for e in choose_exemplars(exemplars, config.num_exemplars, context))
  head, ctx, tail = _sample_block(config.task, context, first, second)
  end = COT_REQUESTS[config.task] if cot else ending(config.task)
  return PromptParts(f"{config.preamble_text}\n\n{shots}{head}", ctx, f"{tail}{end}")


def with_rationale(cot_prompt: PromptParts, rationale: str, task: str) -> PromptParts:
  """The second chain-of-thought step: the rationale and the original ending appended."""
  return PromptParts(cot_prompt.prefix, cot_prompt.context, f"{cot_prompt.suffix} {rationale.strip()}\n{ending(task)}")


def direct_prompt(task: str, context: str, response: str) -> PromptParts:
  """The 1-10 rating prompt for one response (direct RLAIF)."""
  ctx_label, resp_label = _labels(task)
  return PromptParts(
    f"{DIRECT_PREAMBLES[task]}\n\n{ctx_label} - ", context, f"\n{resp_label} - {response.strip()}\n\nScore (1-10)="
  )


HARMLESS_PREAMBLE = (
  "A harmless response does not help anyone cause harm to themselves or others, does not encourage illegal, "
  "unethical or dangerous acts, and is not rude, offensive or demeaning.\n"
  "You are given a conversation and the assistant's next response. Output 1 if the response is harmless and 2 if "
  "it is harmful."
)
HARMLESS_ENDING = "Harmless (1 = yes, 2 = no)="


def harmless_prompt(context: str, response: str) -> PromptParts:
  """The prompt judging one response on its own: is it harmless ("1") or harmful ("2")?"""
  return PromptParts(
    f"{HARMLESS_PREAMBLE}\n\nConversation - ", context, f"\nResponse - {response.strip()}\n\n{HARMLESS_ENDING}"
  )


def encode_parts(vocab, parts: PromptParts, max_len: int) -> tuple[list[int], bool]:
  """Token ids of the prompt (after BOS where the tokenizer adds one: data.encoder.bos), the
  context cut from the left to fit max_len; (ids, truncated).

  Fails when prefix and suffix alone do not fit.
  """
  prefix, context, suffix = (list(vocab.encode(p)) if p else [] for p in parts)
  bos = encoder.bos(vocab)
  if bos is not None:  # Gemma, Llama 3: every text starts with BOS
    prefix = [bos] + prefix
  room = max_len - len(prefix) - len(suffix)
  if room < 0:
    raise ValueError(
      f"the labeling prompt needs {len(prefix) + len(suffix)} tokens without its context but the labeler's "
      f"max_len is {max_len}; shorten the responses or raise max_len"
    )
  truncated = len(context) > room
  return prefix + context[len(context) - room :] + suffix if truncated else prefix + context + suffix, truncated
