"""seqio task registrations. Importing this package registers every task.

import tasks, seqio
seqio.get_mixture_or_task("tldr_sft_fixture").get_dataset({"inputs": 512, "targets": 128}, "train")
"""

from tasks import tldr  # noqa: F401  (registers its tasks on import)
