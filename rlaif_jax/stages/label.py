"""The `label` stage: AI preference labels for a pair task or a candidates file.

Appends one JSON line per pair to <workdir>/labels.jsonl as it goes (flushed per chunk); a
rerun skips ids already there, so a killed job resumes without losing or repeating a label.
With human labels, writes report.md, report.json and calibration.png (alignment on all pairs
and on the high-confidence ones, side by side).

Few-shot studies: with exemplar_draws = k, each of k seeded random draws of the exemplars labels
every pair under <workdir>/draw_<d>/, and <workdir>/report.md gives each draw's alignment and
their mean with a 95% interval (the paper averages random 1-shot trials).
"""

from __future__ import annotations

from rlaif_jax import data, models, partitioning
from rlaif_jax.labeling import Labeler, PromptConfig, jobs
from rlaif_jax.stages.base import stage


@stage
def run_label(
  workdir: str,
  labeler: models.ModelSource,
  task: str | None = "hh_harmless_pairs",
  split: str = "test",
  candidates_file: str | None = None,
  prompt_config: PromptConfig = PromptConfig(task="harmlessness"),
  exemplars_file: str | None = None,
  exemplar_draws: int = 0,
  max_len: int = 1024,
  batch_size: int = 8,
  chunk_size: int = 32,
  mesh_shape: dict | None = None,
  labeler_name: str | None = None,
  limit: int | None = None,
  sample: str = "random",
  seed: int = 0,
) -> dict:
  """Labels every pair, or `limit` of them (sample='random': a sample seeded by `seed`; 'first':
  the first ones), with the labeler (a ModelSource: a pretrained model, a fine-tuned checkpoint
  of one, or a trainer checkpoint), resuming from labels.jsonl. Exemplars come in file order, or
  with exemplar_draws = k > 0 from k seeded random draws, each labeling every pair."""
  pairs = jobs.choose_pairs(data.load_pairs(task, split, candidates_file), limit, sample, seed)
  pool = jobs.exemplar_pool(exemplars_file, prompt_config)
  name = labeler_name or labeler.name
  mesh = partitioning.make_mesh(mesh_shape)
  model = Labeler.from_source(labeler, mesh, name=name, max_len=max_len, batch_size=batch_size)
  info = {"prompt_variant": prompt_config.name, "labeler": name, "labeler_source": labeler.identity}
  info["chat_format"] = model.chat.name if model.chat else "none"  # in the report and in what the labels were made with
  return jobs.label_job(model, pairs, prompt_config, pool, workdir, chunk_size, seed, info, exemplar_draws)
