"""seqio task registrations. Importing this package registers every task (byte vocabulary).

  import seqio, tasks
  seqio.get_mixture_or_task("hh_harmless_pairs").get_dataset(None, split="test")

Tasks: tldr_sft, tldr_prompts, tldr_comparisons, tldr_comparisons_high_confidence,
hh_helpful_pairs, hh_harmless_pairs, hh_prompts, candidates, prompts; plus the factories
register_candidates_task and register_prompts_task for users' own files. `register_all`
registers the same tasks for another vocabulary under a name suffix (e.g. "_gemma3").
Data come from rlaif_jax.data.paths.data_root() when a dataset is asked for.
"""

from tasks import candidates, hh, tldr
from tasks.candidates import register_candidates_task, register_prompts_task
from tasks.common import LOAD_REPORTS

TASK_NAMES = (
  "tldr_sft",
  "tldr_prompts",
  "tldr_comparisons",
  "tldr_comparisons_high_confidence",
  "hh_helpful_pairs",
  "hh_harmless_pairs",
  "hh_prompts",
  "candidates",
  "prompts",
)


def register_all(vocabulary=None, suffix: str = "") -> None:
  """Registers every task for `vocabulary` (default: seqio.ByteVocabulary) as NAME + suffix."""
  tldr.register_all(vocabulary, suffix)
  hh.register_all(vocabulary, suffix)
  candidates.register_all(vocabulary, suffix)


register_all()

__all__ = ["LOAD_REPORTS", "TASK_NAMES", "register_all", "register_candidates_task", "register_prompts_task"]
