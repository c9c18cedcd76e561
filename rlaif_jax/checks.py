"""Counts and sizes checked before work starts, with errors that name the setting, and the
decorator every stage function wears (`stage`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
from collections.abc import Callable, Mapping

from rlaif_jax import records

# Arguments that must be positive integers (None, where it is the default, means "all" or "off").
POSITIVE = (
  "accum_steps", "batch_size", "checkpoint_every", "chunk_size", "judge_max_len", "kl_horizon", "max_len",
  "max_new_tokens", "max_prompt_len", "minibatches", "update_epochs", "num_iterations", "num_steps", "log_every",
  "sample_every", "limit", "harmless_limit", "keep_checkpoints", "eos_check_every", "kl_max_new_tokens",
)  # fmt: skip
# Arguments that may be 0 (off) but not negative.
NON_NEGATIVE = ("top_k", "eval_every", "exemplar_draws", "num_samples", "resample_every", "kl_prompts")


def check_arguments(name: str, arguments: Mapping[str, object]) -> None:
  """A ValueError naming the first count or size that is not a positive (or, for the ones that
  switch something off at 0, non-negative) integer; `name` is the stage function's or config
  class's name."""
  for key, value in arguments.items():
    if value is None or key not in POSITIVE + NON_NEGATIVE:
      continue
    floor = 1 if key in POSITIVE else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < floor:
      need = "a positive integer" if floor else "an integer >= 0"
      raise ValueError(f"{name}.{key}={value!r}: must be {need}")


def stage(fn: Callable) -> Callable:
  """Checks fn's arguments (check_arguments), then runs it holding its workdir's lock."""
  signature = inspect.signature(fn)

  @functools.wraps(fn)
  def run(*args, **kwargs):
    arguments = signature.bind_partial(*args, **kwargs).arguments
    check_arguments(fn.__name__, arguments)
    settings = {**_defaults(signature), **arguments}
    check_inputs(fn.__name__, settings)
    with records.workdir_lock(arguments.get("workdir")):
      where = runtime(settings)
      logging.info("%s: %s", fn.__name__, describe_runtime(where))
      before = _stamp(arguments.get("workdir"))
      summary = fn(*args, **kwargs)
      return record_runtime(summary, where, arguments.get("workdir"), before)

  return run


# Arguments naming files a stage reads (besides tasks that are files).
INPUT_FILES = ("candidates_file", "ai_labels", "exemplars_file")
SPLITS = ("split", "train_split", "eval_split")


def _defaults(signature: inspect.Signature) -> dict:
  return {k: p.default for k, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}


def check_inputs(name: str, arguments: Mapping[str, object]) -> None:
  """A FileNotFoundError naming the setting (`run_rl.task='my.jsonl': no such file`) for an input
  file, a task that is a file (each split it is read for), or a model source's checkpoint or
  pretrained path that does not exist, before the stage loads anything."""
  from rlaif_jax import data, models  # checks is imported by the stages, which import these anyway
  from rlaif_jax.labeling import jobs

  missing = []
  for key, value in arguments.items():
    if key in INPUT_FILES and isinstance(value, str):  # the bundled exemplars are found from any folder
      missing += [(key, value, jobs.exemplars_path(value) if key == "exemplars_file" else value)]
    elif key.endswith("task") and data.is_file(value):
      prefix = key.removesuffix("task")  # harmless_task is read for harmless_split
      splits = {arguments[prefix + s] for s in SPLITS if isinstance(arguments.get(prefix + s), str)} or {""}
      missing += [(key, value, data.file_for(value, s)) for s in sorted(splits)]
    elif key == "policies" and isinstance(value, Mapping):  # evaluate: name -> checkpoints folder
      missing += [(f"policies[{k!r}]", v, v) for k, v in value.items() if isinstance(v, str)]
    else:
      missing += _sources(key, value, models.ModelSource)
  for key, value, path in missing:  # path: what must exist (a split's file, an RM's checkpoints)
    if not os.path.exists(path):
      which = "" if path == value else f" ({path})"
      raise FileNotFoundError(f"{name}.{key}={value!r}: no such file or folder{which}")


def _sources(key: str, value, source_type) -> list[tuple]:
  """(setting, value, path) of a model source's checkpoint and pretrained path, and of a scorer's
  reward-model folder and labeler."""
  if isinstance(value, source_type):
    found = [(f"{key}.checkpoint", value.checkpoint, value.checkpoint)] if value.checkpoint else []
    if value.pretrained and ("/" in value.pretrained or os.sep in value.pretrained):
      found.append((f"{key}.pretrained", value.pretrained, value.pretrained))
    return found
  if not dataclasses.is_dataclass(value) or isinstance(value, type):
    return []
  found = []
  for field in dataclasses.fields(value):
    inner = getattr(value, field.name)
    if field.name == "workdir" and isinstance(inner, str):  # a reward-model run: its checkpoints
      found.append((f"{key}.workdir", inner, os.path.join(inner, "checkpoints")))
    else:
      found += _sources(f"{key}.{field.name}", inner, source_type)
  return found


def runtime(settings: Mapping[str, object]) -> dict:
  """Where a stage runs: processes, devices (platform and kind) and, for a stage with a mesh, its
  axis sizes."""
  import jax

  from rlaif_jax import partitioning

  devices = jax.devices()
  where = {
    "processes": jax.process_count(),
    "devices": len(devices),
    "platform": devices[0].platform,
    "device_kind": devices[0].device_kind,
  }
  if "mesh_shape" in settings:
    where["mesh"] = partitioning.mesh_sizes(settings["mesh_shape"], len(devices))
  return where


def describe_runtime(where: Mapping[str, object]) -> str:
  mesh = where.get("mesh")
  text = f"{where['processes']} process(es), {where['devices']} {where['platform']} device(s) ({where['device_kind']})"
  return text + (", mesh " + " x ".join(f"{a}={n}" for a, n in mesh.items()) if mesh else "")


def _stamp(workdir) -> int | None:
  path = os.path.join(workdir, "summary.json") if isinstance(workdir, str) else None
  return os.stat(path).st_mtime_ns if path and os.path.exists(path) else None


def record_runtime(summary, where: dict, workdir, before: int | None = None) -> object:
  """The stage's summary with `runtime` added, also in <workdir>/summary.json: merged into the one
  the stage wrote in this run (its stamp differs from `before`), else the returned summary (by
  process 0)."""
  if not isinstance(summary, dict):
    return summary
  summary = {**summary, "runtime": where}
  if isinstance(workdir, str) and os.path.isdir(workdir):
    import jax

    if jax.process_index() == 0:
      path = os.path.join(workdir, "summary.json")
      now = _stamp(workdir)
      written = records.read_json(path, None) if now is not None and now != before else None
      records.write_json(path, {**(written if isinstance(written, dict) else summary), "runtime": where}, indent=2)
  return summary
