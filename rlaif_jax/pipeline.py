"""The pipeline run: a configuration's entries in order, each stage's arguments from gin, and the
stages.json bookkeeping that lets a rerun skip each entry that finished with the settings it has
now and run the rest again, resuming from what they wrote.

run is the gin configurable `run` (run.stages, run.workdir, run.redo, ...); gin_setup.run_command
runs a command's experiments before it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence

import gin

from rlaif_jax import configurables, data, records
from rlaif_jax.checks import check_arguments
from rlaif_jax.stages import base, report
from rlaif_jax.stages.registry import STAGES

STAGE_LOG = report.STAGE_LOG


@gin.configurable("run")
def run(
  stages: Sequence[str] = gin.REQUIRED,
  data_root: str | None = None,
  workdir: str | None = None,
  redo: Sequence[str] = (),
  experiments: Mapping[str, str] | None = None,
) -> dict:
  """Runs the stage entries in order; each stage's arguments come from gin.

  An entry is a stage name ("sft") or scope/stage ("rlhf/rl"): the stage then also reads the
  bindings under that gin scope (rlhf/run_rl.workdir = ...), so one experiment can run a
  stage several times. With workdir, finished entries are recorded in <workdir>/stages.json
  with their wall time, summary and settings (every gin binding the entry reads, references
  and macros followed), and a rerun skips an entry only when its settings are the recorded ones
  and no entry before it ran again; otherwise it runs again, saying which settings changed,
  and resumes from what it wrote where those are the same (entries in `redo` always run). An
  entry that crashed or was killed is not recorded, so it runs again and resumes. data_root
  replaces $RLAIF_DATA_DIR (and the bundled fixtures) for every task. experiments (name -> gin
  file) are whole experiments the command runs before these stages (see gin_setup.run_command).
  """
  del experiments  # gin_setup.run_command's
  if data_root is not None:
    data.set_data_root(data_root)
  unknown = [entry for entry in stages if entry.split("/")[-1] not in STAGES or entry.count("/") > 1]
  if unknown:  # checked before any stage starts, so a typo costs nothing
    raise ValueError(f"run.stages names unknown stage {unknown[0]!r}; stages: {sorted(STAGES)} (or scope/stage)")
  missing = sorted({macro for entry in stages for macro in configurables.required_macros(entry)})
  if missing:  # a recipe's %gin.REQUIRED macros, before anything is read or written
    sets = " ".join(f"--gin_bindings=\"{m}='...'\"" for m in missing)
    raise ValueError(f"set {', '.join(missing)} (the gin file's header says what each is): {sets}")
  arguments = {}  # entry -> the arguments gin gives its stage
  base.check_workdir("run.workdir", workdir)
  for entry in stages:  # so are every entry's counts and sizes
    scope, _, name = entry.rpartition("/")
    arguments[entry] = configurables.entry_bindings(entry, resolve=True)
    check_arguments(f"{scope + '/' if scope else ''}{STAGES[name][0].__name__}", arguments[entry])
    base.check_workdir(f"{entry}: workdir", arguments[entry].get("workdir"))
  check_distinct_workdirs(arguments)
  with records.workdir_lock(workdir):
    return _run_entries(stages, arguments, workdir, redo, data_root)


def check_distinct_workdirs(arguments: Mapping[str, dict]) -> None:
  """A ValueError naming both entries when two write into one folder (each would resume, or move
  aside, the other's checkpoints and records)."""
  seen = {}
  for entry, args in arguments.items():
    folder = args.get("workdir")
    if not isinstance(folder, str):
      continue
    key = os.path.realpath(folder)
    if key in seen:
      raise ValueError(
        f"stages {seen[key]} and {entry} both have workdir {folder!r}; give each its own folder "
        f"({STAGES[entry.rpartition('/')[2]][0].__name__}.workdir)"
      )
    seen[key] = entry


def _run_entries(
  stages: Sequence[str], arguments: dict, workdir: str | None, redo: Sequence[str], data_root: str | None
) -> dict:
  log_path = os.path.join(workdir, STAGE_LOG) if workdir else None
  done = records.read_json(log_path, {}) if log_path else {}
  if not isinstance(done, dict) or not all(isinstance(v, dict) for v in done.values()):
    raise records.RecordsError(
      f"{log_path} does not hold {{entry: {{seconds, summary, settings}}}}: move it away (every stage then runs "
      "again, resuming from what it wrote)"
    )
  results, reran = {}, None  # reran: the first entry that ran in this run (later ones may read its outputs)
  for entry in stages:
    settings = configurables.entry_settings(entry, data_root)
    found = base.made_with(arguments[entry], {})  # files read and models started from, by content
    settings["inputs"] = {"models": found["models"], "files": found["files"]}
    recorded = done.get(entry)
    if recorded and entry not in redo:
      changed = _changed(recorded.get("settings", settings), settings)
      if not changed and reran is None:
        logging.info("stage %s: finished in an earlier run with these settings (%s); skipped", entry, log_path)
        results[entry] = recorded["summary"]
        continue
      why = f"settings changed ({', '.join(changed)})" if changed else f"stage {reran} before it ran again"
      logging.warning("stage %s: finished in an earlier run, but %s: running it again", entry, why)
    scope, _, name = entry.rpartition("/")
    logging.info("stage %s", entry)
    start = time.perf_counter()
    stage_dir = arguments[entry].get("workdir")
    rerun = records.replacing_stale() if recorded else contextlib.nullcontext()  # what changed wants new records
    try:
      with gin.config_scope(scope or None), base.described(settings), rerun:
        results[entry] = configurables.CONFIGURED_STAGES[name]()
    finally:  # the settings it ran with, beside its outputs (as t5x writes them), once it has a folder
      if isinstance(stage_dir, str) and os.path.isdir(stage_dir):
        write_config(stage_dir, entry)
    reran = reran or entry
    if log_path:
      done[entry] = {"seconds": round(time.perf_counter() - start, 1), "summary": results[entry], "settings": settings}
      _write_log(log_path, done)
  return results


def write_config(folder: str, entry: str) -> None:
  """<folder>/config.gin: every gin binding of this run (the entry's own are under its scope)."""
  header = f"# rlaif_jax {' '.join(sys.argv[1:])[:500]}\n# pipeline entry: {entry}\n\n"
  records.write_text(os.path.join(folder, "config.gin"), header + gin.config_str())


def _changed(before: dict, now: dict) -> list[str]:
  """The settings (top-level arguments) whose description differs; for the inputs, which file's
  or model's content (inputs.files.<setting>=<path>, inputs.models.<setting>)."""
  changed = []
  for k in sorted(set(before) | set(now)):
    if before.get(k) == now.get(k):
      continue
    if k == "inputs" and isinstance(before.get(k), dict) and isinstance(now.get(k), dict):
      for kind in ("models", "files"):
        old, new = before[k].get(kind) or {}, now[k].get(kind) or {}
        changed += [f"inputs.{kind}.{n}" for n in sorted(set(old) | set(new)) if old.get(n) != new.get(n)]
    else:
      changed.append(k)
  return changed


STAGE_LOG = report.STAGE_LOG


def _write_log(path: str, log: dict) -> None:
  records.write_json(path, log)
