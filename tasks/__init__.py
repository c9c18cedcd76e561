"""seqio task registrations. Importing this package registers every task (byte vocabulary).

  import seqio
  from rlaif_jax import tasks
  seqio.get_mixture_or_task("hh_harmless_pairs").get_dataset(None, split="test")

Tasks: tldr_sft, tldr_prompts, tldr_comparisons, tldr_comparisons_high_confidence,
hh_helpful_pairs, hh_harmless_pairs, hh_helpful_sft, hh_harmless_sft, hh_helpful_prompts,
hh_harmless_prompts, hh_prompts, candidates, prompts; plus the factories
register_candidates_task and register_prompts_task for users' own files. `register_all`
registers the same tasks for another vocabulary under a name suffix (e.g. "_gemma3").
Data come from rlaif_jax.data.paths.data_root() when a dataset is asked for.
"""

import contextlib
import os
import sys


@contextlib.contextmanager
def _native_logs_hidden():
  """TensorFlow only reads data here, yet its import and device set-up print C++ log lines (a CUDA driver probe on
  machines without a GPU, oneDNN notes) that TF_CPP_MIN_LOG_LEVEL no longer reaches: the import
  runs with file descriptor 2 pointed at /dev/null. RLAIF_JAX_TF_LOGS=1 shows them."""
  if os.environ.get("RLAIF_JAX_TF_LOGS") == "1" or "tensorflow" in sys.modules:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as null:
      os.dup2(null.fileno(), 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


with _native_logs_hidden():
  import seqio  # noqa: F401
  import tensorflow

  # JAX owns the accelerators: TF sees no GPU (no memory taken, no CUDA probe later).
  tensorflow.config.set_visible_devices([], "GPU")

from rlaif_jax.tasks import candidates, hh, tldr  # noqa: E402
from rlaif_jax.tasks.candidates import register_candidates_task, register_prompts_task  # noqa: E402
from rlaif_jax.tasks.common import LOAD_REPORTS  # noqa: E402

TASK_NAMES = (
  "tldr_sft",
  "tldr_prompts",
  "tldr_comparisons",
  "tldr_comparisons_high_confidence",
  "hh_helpful_pairs",
  "hh_harmless_pairs",
  "hh_helpful_sft",
  "hh_harmless_sft",
  "hh_helpful_prompts",
  "hh_harmless_prompts",
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
