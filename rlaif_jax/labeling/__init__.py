"""AI labeling: preference and direct scoring with an off-the-shelf LLM (paper section 2.1).

The math (names fixed by docs/API.md) is in scoring.py; prompts.py renders every prompting
technique; labeler.py runs a decoder over batches of prompts.
"""

from rlaif_jax.labeling.labeler import Labeler
from rlaif_jax.labeling.prompts import (
  Exemplar,
  PromptConfig,
  PromptParts,
  direct_prompt,
  encode_parts,
  harmless_prompt,
  load_exemplars,
  pair_prompt,
  with_rationale,
)
from rlaif_jax.labeling.scoring import debias_preference, direct_score, preference_from_logits
from rlaif_jax.labeling.tokens import PAIR_ANSWERS, SCORE_ANSWERS, Answers, resolve_answers

__all__ = [
  "PAIR_ANSWERS",
  "SCORE_ANSWERS",
  "Answers",
  "Exemplar",
  "Labeler",
  "PromptConfig",
  "PromptParts",
  "debias_preference",
  "direct_prompt",
  "direct_score",
  "encode_parts",
  "harmless_prompt",
  "load_exemplars",
  "pair_prompt",
  "preference_from_logits",
  "resolve_answers",
  "with_rationale",
]
