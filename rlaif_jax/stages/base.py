"""The decorator every stage function wears (`stage`): its arguments and inputs checked before any
work starts, its workdir locked while it runs, what its result depends on (made_with) given to the
trainers that claim checkpoints with it, and where it ran recorded in its summary."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import jax

from rlaif_jax import checks, data, models, partitioning, plots, records, writers
from rlaif_jax.checkpoints import step_identity
from rlaif_jax.labeling import jobs


def stage(fn: Callable | None = None, *, curves: Sequence[str] = (), title: str = "") -> Callable:
  """Checks fn's arguments (check_arguments) and inputs, then runs it holding its workdir's lock,
  with what its result depends on (made_with) as the settings its checkpoints are claimed with,
  and writes what every stage writes at its end (finish): summary.json, and with curves (metric
  names of its metrics.jsonl), curves.png titled title. `@stage` or `@stage(curves=..., title=...)`."""
  if fn is None:
    return functools.partial(stage, curves=tuple(curves), title=title)
  signature = inspect.signature(fn)

  @functools.wraps(fn)
  def run(*args, **kwargs):
    arguments = signature.bind_partial(*args, **kwargs).arguments
    checks.check_arguments(fn.__name__, arguments)
    settings = {**_defaults(signature), **arguments}
    check_workdir(f"{fn.__name__}.workdir", settings.get("workdir"))
    check_inputs(fn.__name__, settings)
    if any(key.endswith("task") and isinstance(v, str) and not data.is_file(v) for key, v in settings.items()):
      import rlaif_jax.tasks  # noqa: F401  (registers the seqio tasks; TensorFlow only where one is read)
    with records.workdir_lock(arguments.get("workdir")):
      where = runtime(settings)
      logging.info("%s: %s", fn.__name__, describe_runtime(where))
      described = _DESCRIBED.get()
      with checks.making(functools.cache(lambda: {"stage": fn.__name__, **made_with(settings, described)})):
        summary = fn(*args, **kwargs)
      return finish(summary, where, arguments.get("workdir"), curves, title)

  return run


def check_workdir(name: str, workdir) -> None:
  """A ValueError, before anything is written, for a workdir that cannot be a job's own folder:
  empty, the filesystem's root, a path starting with '//', or an existing file."""
  if workdir is None:
    return
  if not isinstance(workdir, str) or not workdir.strip():
    raise ValueError(f"{name}={workdir!r}: must name a folder (e.g. 'runs/mine')")
  if workdir.startswith("//"):
    raise ValueError(f"{name}={workdir!r}: a path starting with '//' (a macro left empty?); name a folder")
  if os.path.realpath(workdir) == os.path.realpath(os.sep):
    raise ValueError(f"{name}={workdir!r} is the filesystem's root; name a folder of this job's own")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"{name}={workdir!r} is a file, not a folder; name a folder (it is created when missing)")
  parent = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(parent) and parent != os.path.dirname(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f"{name}={workdir!r} is inside {parent}, which is a file; name a folder")


# The command line's description of the running entry's settings in gin terms (references followed), which
# `stage` prefers to the arguments' own: an optimizer object has no stable description.
_DESCRIBED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("described", default=None)
# Settings that say how a stage runs, not what it trains: a run resumed under other values is the
# same run (more steps, another mesh, other logging).
RUN_ONLY = (
  "workdir", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every", "tensorboard", "num_steps",
  "num_iterations", "mesh_shape", "rules", "accum_steps", "num_samples", "sample_every", "progress",
  "record_rollouts", "kl_prompts", "kl_max_new_tokens", "sampling_config", "inputs", "fit",
)  # fmt: skip
# (fit is a training stage's trainer.FitConfig: its cadence. accum_steps splits each batch into
# microbatches: the same mean gradient. sampling_config is what SFT's shown samples use, kl_* what
# DPO's evaluation samples; "inputs" is main's record of the files and models, which made_with
# digests itself.)


@contextlib.contextmanager
def described(settings: Mapping[str, object]):
  """Runs stages with `settings` (configurables.entry_settings: the entry's gin bindings, references and
  macros followed) as the description of their settings in made_with."""
  token = _DESCRIBED.set(dict(settings))
  try:
    yield
  finally:
    _DESCRIBED.reset(token)


def made_with(settings: Mapping[str, object], described_settings: Mapping[str, object] | None = None) -> dict:
  """What a stage's trained result depends on: its settings but the RUN_ONLY ones (as main
  described them, else the arguments' reprs where they are stable), the identity of every model
  it starts from or reads (a checkpoint's step and checksums digest) and a digest of each input file."""
  shown = described_settings if described_settings is not None else {k: _stable(v) for k, v in settings.items()}
  found = {}
  for key, value in settings.items():
    found.update(_model_identities(key, value, models.ModelSource))
  return {
    "settings": {k: v for k, v in shown.items() if k not in RUN_ONLY},
    "models": found,
    "files": {f"{k}={p}": _file_digest(p) for k, _, p in input_paths(settings) if os.path.isfile(p)},
  }


def _stable(value):
  """A description of an argument that is the same in every process and run: reprs of plain
  values and dataclasses, functions by name; other objects by type (their reprs hold memory
  addresses), so a Python caller's optimizer object is not told apart from another one."""
  if value is None or isinstance(value, (str, int, float, bool)):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return [_stable(v) for v in value]
  if isinstance(value, Mapping):
    return {str(k): _stable(v) for k, v in value.items()}
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return repr(value)
  if isinstance(value, functools.partial):
    return {"partial": _stable(value.func), "args": _stable(value.args), "keywords": _stable(value.keywords)}
  if callable(value) and hasattr(value, "__qualname__"):  # a function or class: by name (estimator=Grpo.build)
    return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
  return type(value).__qualname__


def _model_identities(key: str, value, source_type) -> list[tuple[str, str]]:
  """(setting, identity) of every model source in value, and of a scorer's reward-model run."""
  return [
    (where, m.identity if isinstance(m, source_type) else "checkpoint:" + step_identity(os.path.join(m, "checkpoints")))
    for where, m in _models(key, value, source_type)
  ]


def _file_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()[:16]


# Arguments naming files a stage reads (besides tasks that are files).
INPUT_FILES = ("candidates_file", "ai_labels", "exemplars_file")
SPLITS = ("split", "train_split", "eval_split")


def _defaults(signature: inspect.Signature) -> dict:
  return {k: p.default for k, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}


def check_inputs(name: str, arguments: Mapping[str, object]) -> None:
  """A FileNotFoundError naming the setting (`run_rl.task='my.jsonl': no such file`) for an input
  file, a task that is a file (each split it is read for), or a model source's checkpoint or
  pretrained path that does not exist, before the stage loads anything."""
  missing = input_paths(arguments)
  for key, value in arguments.items():
    if key == "policies" and isinstance(value, Mapping):  # evaluate: name -> checkpoints folder
      missing += [(f"policies[{k!r}]", v, v) for k, v in value.items() if isinstance(v, str)]
    else:
      missing += _sources(key, value, models.ModelSource)
  for key, value, path in missing:  # path: what must exist (a split's file, an RM's checkpoints)
    if not os.path.exists(path):
      which = "" if path == value else f" ({path})"
      raise FileNotFoundError(f"{name}.{key}={value!r}: no such file or folder{which}")


def input_paths(arguments: Mapping[str, object]) -> list[tuple[str, str, str]]:
  """(setting, value, path) of each file a stage reads its data from: input files, and a task
  that is a file, once per split it is read for."""
  found = []
  for key, value in arguments.items():
    if key in INPUT_FILES and isinstance(value, str):  # the bundled exemplars are found from any folder
      found += [(key, value, jobs.exemplars_path(value) if key == "exemplars_file" else value)]
    elif key.endswith("task") and data.is_file(value):
      prefix = key.removesuffix("task")  # harmless_task is read for harmless_split
      splits = {arguments[prefix + s] for s in SPLITS if isinstance(arguments.get(prefix + s), str)} or {""}
      found += [(key, value, data.file_for(value, s)) for s in sorted(splits)]
  return found


def _sources(key: str, value, source_type) -> list[tuple]:
  """(setting, value, path) of a model source's checkpoint and pretrained path, and of a scorer's
  reward-model folder and labeler."""
  found = []
  for where, model in _models(key, value, source_type):
    if not isinstance(model, source_type):  # a reward-model run: its checkpoints
      found.append((where, model, os.path.join(model, "checkpoints")))
      continue
    if model.checkpoint:
      found.append((f"{where}.checkpoint", model.checkpoint, model.checkpoint))
    if model.pretrained and ("/" in model.pretrained or os.sep in model.pretrained):
      found.append((f"{where}.pretrained", model.pretrained, model.pretrained))
  return found


def _models(key: str, value, source_type) -> list[tuple[str, object]]:
  """(setting, model) of every model a setting names: each model source in it (a dataclass such as
  a scorer is searched field by field), and for a `workdir` field the reward-model run's folder."""
  if isinstance(value, source_type):
    return [(key, value)]
  if not dataclasses.is_dataclass(value) or isinstance(value, type):
    return []
  found = []
  for field in dataclasses.fields(value):
    inner = getattr(value, field.name)
    if field.name == "workdir" and isinstance(inner, str):
      found.append((f"{key}.workdir", inner))
    else:
      found += _models(f"{key}.{field.name}", inner, source_type)
  return found


def runtime(settings: Mapping[str, object]) -> dict:
  """Where a stage runs: processes, devices (platform and kind) and, for a stage with a mesh, its
  axis sizes."""
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


def write_curves(workdir: str, curves: Sequence[str], title: str) -> str | None:
  """<workdir>/curves.png: the named metrics of the stage's metrics.jsonl against step (None
  when none was logged)."""
  rows = writers.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
  return plots.plot_curves(rows, list(curves), os.path.join(workdir, "curves.png"), title)


UNSAVED = ("samples",)  # returned to the caller, not kept in summary.json (samples.jsonl holds them)


def finish(summary, where: dict, workdir, curves: Sequence[str] = (), title: str = "") -> object:
  """The stage's summary with `runtime` (and `curves_png`) added, written by process 0 to
  <workdir>/summary.json without UNSAVED keys; curves.png plots the named metrics of the stage's
  metrics.jsonl. A stage writes neither itself."""
  if not isinstance(summary, dict):
    return summary
  summary = {**summary, "runtime": where}
  if isinstance(workdir, str) and os.path.isdir(workdir) and jax.process_index() == 0:
    if curves:
      summary["curves_png"] = write_curves(workdir, curves, title)
    saved = {k: v for k, v in summary.items() if k not in UNSAVED}
    records.write_json(os.path.join(workdir, "summary.json"), saved, indent=2)
  return summary
