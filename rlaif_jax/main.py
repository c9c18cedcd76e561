"""rlaif_jax command line: gin-configured pipeline stages, in the t5x manner.

  python -m rlaif_jax.main --gin_file=gin/experiments/tiny_sft.gin \\
      --gin_bindings="WORKDIR='/tmp/sft'" --gin_bindings="run_sft.num_steps=50"

Settings: each stage is a function run_<stage> (rlaif_jax/stages/<stage>.py) whose arguments are
its settings, bound in gin as run_<stage>.<argument>; gin/runs/<stage>.gin holds the values the
experiments start from, and gin/recipes/ and gin/experiments/ set the rest. --settings prints
every setting of the stages a command would run, its value and its default, and exits.

The library does not import gin: this binary registers its functions as gin configurables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import inspect
import logging
import os
import re
import sys
import time
import tokenize
import traceback
from collections.abc import Mapping, Sequence

import gin
from absl import app, flags

import tasks  # noqa: F401  (registers the seqio tasks)
from rlaif_jax import checks, data, generation, models, optimizers, records, sampling, scorers
from rlaif_jax import rl as rl_lib
from rlaif_jax import rrhf as rrhf_lib
from rlaif_jax.checks import check_arguments
from rlaif_jax.labeling import PromptConfig
from rlaif_jax.stages import candidates, data_report, dpo, evaluate, label, labelers, report, rl, rm, rrhf, tasks_report
from rlaif_jax.stages import sft as sft_stage

# Stage name -> (function, what it does).
STAGES = {
  "data": (data_report.run_data_report, "load seqio tasks and report examples, truncation and skipped lines"),
  "sft": (sft_stage.run_sft, "supervised fine-tuning on a seqio SFT task, then sample generations"),
  "label": (label.run_label, "AI preference labels for a pair task or candidates file, with an alignment report"),
  "labelers": (labelers.run_labelers, "several AI labelers label the same pairs: alignment and position bias each"),
  "rm": (rm.run_rm, "reward model on AI soft labels (distilled RLAIF), human labels (RLHF) or both"),
  "rl": (
    rl.run_rl,
    "REINFORCE + value baseline + KL to SFT (or PPO, RLOO, GRPO, OAIF); reward: an RM, the direct labeler, or pairs",
  ),
  "dpo": (
    dpo.run_dpo,
    "DPO or IPO on labeled pairs: AI soft labels (default), human labels or both; no RM, no sampling",
  ),
  "rrhf": (rrhf.run_rrhf, "RRHF: rank k scored responses (reward model, direct labeler or human) + SFT on the best"),
  "candidates": (candidates.run_candidates, "pairs of responses sampled from a policy, for the AI labeler"),
  "evaluate": (evaluate.run_evaluate, "AI-judged win rates between policies, harmless rate, lengths, human sheets"),
  "report": (report.run_report, "one report.md/report.json (and plots) over a pipeline's stage folders"),
  "tasks_report": (
    tasks_report.run_tasks_report,
    "the paper's headline table over the tasks' pipeline folders: RLAIF, RLHF, direct RLAIF vs SFT, harmless rates",
  ),
}

_HELP_STAGES = "; ".join(f"{name}: {doc}" for name, (_, doc) in STAGES.items())

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files to load, in order (experiments include models and runs).")
flags.DEFINE_multi_string("gin_bindings", [], 'Gin bindings applied after the files, e.g. "run_sft.num_steps=10".')
flags.DEFINE_multi_string("gin_search_paths", ["."], "Folders searched for gin files and their includes.")
flags.DEFINE_list("stages", None, f"Stages to run, overriding the gin file's run.stages. Stages: {_HELP_STAGES}.")
flags.DEFINE_bool(
  "settings",
  False,
  "Print the settings of the stages that would run (run.stages or --stages): each argument's value from the gin "
  "files and bindings beside its default, configurables they reference expanded; then exit without running.",
)
flags.DEFINE_bool("verbose", False, "On an error, print its full traceback after the one-line message.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize (TPU pods, GPU clusters).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (auto-detected on TPU and SLURM).")
flags.DEFINE_integer("num_processes", None, "Number of processes (auto-detected on TPU and SLURM).")
flags.DEFINE_integer("process_id", None, "This process's index (auto-detected on TPU and SLURM).")


def register_configurables() -> None:
  """Makes library functions bindable from gin without the library importing gin."""
  ext = gin.external_configurable
  ext(models.preset, "preset", module="models")
  ext(models.ModelSource, "ModelSource", module="models")
  ext(models.lora.lora, "lora", module="models")
  ext(generation.StopRule, "StopRule", module="generation")
  ext(scorers.RewardModelScorer, "RewardModelScorer", module="scorers")
  ext(scorers.DirectScorer, "DirectScorer", module="scorers")
  ext(scorers.HumanScorer, "HumanScorer", module="scorers")
  ext(optimizers.adamw, "adamw", module="optimizers")
  ext(optimizers.warmup_cosine, "warmup_cosine", module="optimizers")
  ext(optimizers.warmup_constant, "warmup_constant", module="optimizers")
  ext(sampling.SamplingConfig, "SamplingConfig", module="sampling")
  ext(PromptConfig, "PromptConfig", module="labeling")
  ext(rrhf_lib.Sources, "Sources", module="rrhf")
  ext(rl_lib.RLConfig, "RLConfig", module="rl")
  ext(rl_lib.Reinforce.build, "Reinforce", module="rl")
  ext(rl_lib.Rloo.build, "Rloo", module="rl")
  ext(rl_lib.Grpo.build, "Grpo", module="rl")
  ext(rl_lib.Ppo.build, "Ppo", module="rl")
  ext(rl_lib.OnlineDpo.build, "OnlineDpo", module="rl")
  ext(scorers.PairwiseScorer, "PairwiseScorer", module="scorers")
  for name, (fn, _) in STAGES.items():
    _CONFIGURED_STAGES[name] = ext(fn, fn.__name__, module="stages")


_CONFIGURED_STAGES: dict = {}  # stage name -> the gin-configured stage function


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
  file) are whole experiments the command runs before these stages (see run_command).
  """
  del experiments  # run_command's
  if data_root is not None:
    data.set_data_root(data_root)
  unknown = [entry for entry in stages if entry.split("/")[-1] not in STAGES or entry.count("/") > 1]
  if unknown:  # checked before any stage starts, so a typo costs nothing
    raise ValueError(f"run.stages names unknown stage {unknown[0]!r}; stages: {sorted(STAGES)} (or scope/stage)")
  arguments = {}  # entry -> the arguments gin gives its stage
  checks.check_workdir("run.workdir", workdir)
  for entry in stages:  # so are every entry's counts and sizes
    scope, _, name = entry.rpartition("/")
    arguments[entry] = entry_bindings(entry, resolve=True)
    check_arguments(f"{scope + '/' if scope else ''}{STAGES[name][0].__name__}", arguments[entry])
    checks.check_workdir(f"{entry}: workdir", arguments[entry].get("workdir"))
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


def run_command(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str], stages=None) -> dict:
  """The command's configuration, parsed: its run.experiments (name -> gin file) first, each as a
  command of its own with the same bindings and WORKDIR = <run.workdir>/<name> (and `stages`, if
  given, as its stages), then the configuration's own stages, e.g. one report over them
  (gin/experiments/tiny_three_tasks.gin). Without experiments: run()."""
  experiments = _experiments()
  if not experiments:
    return run()
  workdir = gin.get_bindings("run", resolve_references=True).get("workdir")
  if not workdir:
    raise ValueError("run.experiments needs run.workdir: each experiment runs in <run.workdir>/<name>")
  results = {}
  for name, file in experiments.items():
    folder = os.path.join(workdir, name)
    logging.info("experiment %s: %s in %s", name, file, folder)
    gin.clear_config()
    parse_gin([file], [*bindings, f"WORKDIR={folder!r}"], search_paths)
    if stages:
      gin.bind_parameter("run.stages", stages)
    results.update({f"{name}: {entry}": summary for entry, summary in run().items()})
  gin.clear_config()
  parse_gin(files, bindings, search_paths)
  return results | run()


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
    settings = entry_settings(entry, data_root)
    found = checks.made_with(arguments[entry], {})  # files read and models started from, by content
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
      with gin.config_scope(scope or None), checks.described(settings), rerun:
        results[entry] = _CONFIGURED_STAGES[name]()
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


def entry_bindings(entry: str, resolve: bool = False) -> dict:
  """The gin bindings of a pipeline entry's stage in the entry's scope: their values (resolve)
  or the references and macros as written."""
  scope, _, name = entry.rpartition("/")
  with gin.config_scope(scope or None):
    return gin.get_bindings(_CONFIGURED_STAGES[name], resolve_references=resolve)


def _reference_bindings(reference: gin.config.ConfigurableReference) -> dict:
  """The bindings of the configurable a reference names, in the reference's scope, as written."""
  with gin.config_scope(_scope_of(reference) or None):
    return gin.get_bindings(reference.selector, resolve_references=False)


def _scope_of(reference: gin.config.ConfigurableReference) -> str:
  """A reference's scope: for a macro (%NAME), its name."""
  return reference.scoped_selector.rpartition("/")[0]


def entry_settings(entry: str, data_root: str | None = None) -> dict:
  """Every gin binding a pipeline entry's stage reads, in its scope, with references and macros
  followed to their own bindings, and data.encoder's version (a stage run by another version fed
  its model other ids, so it runs again); JSON-able, so stages.json can hold it."""
  from rlaif_jax.data import encoder

  bindings = entry_bindings(entry)
  described = {k: _describe(v) for k, v in sorted(bindings.items())}
  return {"run.data_root": repr(data_root), "encoder": encoder.VERSION, **described}


def _describe(value):
  if isinstance(value, gin.config.ConfigurableReference):
    if value.selector == "gin.macro":
      macro = _scope_of(value)
      return {"%": macro, "value": _describe(gin.query_parameter("%" + macro))}
    return {
      "@": value.scoped_selector,
      "called": value.evaluate,
      **{k: _describe(v) for k, v in sorted(_reference_bindings(value).items())},
    }
  if isinstance(value, dict):
    return {repr(k): _describe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_describe(v) for v in value]
  return repr(value)


def settings_table(entry: str) -> str:
  """An entry's settings as text: `run_<stage>.<name>  value  (default ...)` per argument, each
  referenced configurable's own settings indented under it (--settings)."""
  scope, _, name = entry.rpartition("/")
  fn, doc = STAGES[name]
  prefix = f"{scope}/" if scope else ""
  lines = [f"== {entry}: {doc} ==", f'   (set with --gin_bindings="{prefix}{fn.__name__}.<setting>=<value>")']
  lines += _settings_rows(fn, entry_bindings(entry), fn.__name__, "")
  return "\n".join(lines)


def _settings_rows(fn, bound: dict, owner: str, indent: str) -> list[str]:
  rows = []
  for key, param in inspect.signature(fn).parameters.items():
    if key.startswith("_") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
      continue
    required = param.default is inspect.Parameter.empty
    default = "required" if required else f"default {_default(param.default)}"
    if key not in bound:
      rows.append(f"{indent}{owner}.{key} = " + ("<not set>  (required)" if required else f"{_default(param.default)}"))
      continue
    value = bound[key]
    rows.append(f"{indent}{owner}.{key} = {_shown(value)}  ({default})")
    while isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
      value = gin.query_parameter("%" + _scope_of(value))  # what the macro stands for, its settings below
    if isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
      rows += _settings_rows(
        value.configurable.wrapped, _reference_bindings(value), value.scoped_selector, indent + "    "
      )
  return rows


def _default(value) -> str:
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return f"{type(value).__name__}(...)"
  if callable(value) and hasattr(value, "__qualname__"):
    return value.__qualname__
  return repr(value)


def _shown(value) -> str:
  if isinstance(value, gin.config.ConfigurableReference):
    if value.selector == "gin.macro":
      macro = _scope_of(value)
      return f"%{macro} = {_shown(gin.query_parameter('%' + macro))}"
    return f"@{value.scoped_selector}{'()' if value.evaluate else ''}"
  return repr(value)


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


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str]) -> None:
  """Loads gin files and bindings, turning gin's errors into messages that name the setting."""
  for path in search_paths:
    gin.add_config_file_search_path(path)
  for f in files:
    if not any(os.path.exists(os.path.join(p, f)) for p in search_paths) and not os.path.exists(f):
      raise FileNotFoundError(f"--gin_file={f}: no such file (searched {list(search_paths)})")
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, SyntaxError, tokenize.TokenError) as e:  # gin reports unknown parameters and bad syntax so
    raise ValueError(f"bad gin configuration: {_which_binding(bindings) or _unknown_parameter(e) or e}") from None
  except RecursionError:
    raise ValueError(f"gin files {list(files)} include each other in a loop; check their include lines") from None
  except OSError as e:
    raise FileNotFoundError(f"gin include not found: {e}") from None
  if not _experiments():  # a command of experiments: each of them checks the bindings it is given
    check_macros(bindings, [_found(f, search_paths) for f in files])
  expand_folders()


def _which_binding(bindings: Sequence[str]) -> str | None:
  """The first binding gin cannot parse on its own (configurables the files define are known by
  now), with gin's reason; None when each parses."""
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except (ValueError, SyntaxError, tokenize.TokenError) as e:
      reason = _unknown_parameter(e) or re.sub(r"\s*In bindings string line \d+", "", str(e))
      return f"--gin_bindings={binding!r}: {reason}"
  return None


_NO_PARAMETER = re.compile(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'")


def _unknown_parameter(e: Exception) -> str | None:
  """For gin's "doesn't have a parameter named", the closest parameter a stage function has."""
  match = _NO_PARAMETER.search(str(e))
  if not match:
    return None
  name, parameter = match.groups()
  stage_fn = next((fn for fn, _ in STAGES.values() if fn.__name__ == name.rpartition(".")[2]), None)
  known = list(inspect.signature(stage_fn).parameters) if stage_fn else []
  near = difflib.get_close_matches(parameter, known, n=1)
  return f"{name} has no setting {parameter!r}" + (f"; did you mean {near[0]}?" if near else "")


def _experiments() -> dict:
  """run.experiments as bound (name -> gin file), or {}."""
  try:
    return dict(gin.query_parameter("run.experiments") or {})
  except ValueError:  # not bound
    return {}


_PLACEHOLDER = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")


def expand_folders() -> None:
  """Replaces {NAME} in every string setting by the string macro NAME, so an experiment's folders
  follow one macro: `run_sft.workdir = '{WORKDIR}/sft'` with --gin_bindings="WORKDIR='runs/mine'"
  puts every stage under runs/mine (gin has no string concatenation). Runs after the bindings,
  so a macro set on the command line counts; a placeholder naming no string macro is an error."""
  config = gin.config._CONFIG

  def macro(name: str, where: str, seen: tuple) -> str:
    value = config.get((name, "gin.macro"), {}).get("value")
    if not isinstance(value, str) or name in seen:
      raise ValueError(f"{where}: {{{name}}} names no macro set to a plain string (set {name} = '...')")
    return expand(value, name, (*seen, name))

  def expand(value, where, seen=()):
    if isinstance(value, str):
      return _PLACEHOLDER.sub(lambda m: macro(m.group(1), where, seen), value)
    if isinstance(value, (list, tuple)):
      return type(value)(expand(v, where, seen) for v in value)
    if isinstance(value, dict):
      return {k: expand(v, where, seen) for k, v in value.items()}
    return value

  for (scope, selector), params in config.items():
    for name, value in params.items():
      where = f"{scope}/{selector}.{name}".lstrip("/") if selector != "gin.macro" else scope
      params[name] = expand(value, where)


_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def _found(file: str, search_paths: Sequence[str]) -> str:
  return next((os.path.join(p, file) for p in search_paths if os.path.exists(os.path.join(p, file))), file)


def _bound_values():
  """Every value bound in gin's configuration, lists and dicts opened up."""

  def leaves(value):
    if isinstance(value, (list, tuple)):
      for v in value:
        yield from leaves(v)
    elif isinstance(value, dict):
      for v in value.values():
        yield from leaves(v)
    else:
      yield value

  for params in gin.config._CONFIG.values():
    for value in params.values():
      yield from leaves(value)


_INCLUDE = re.compile(r"^include\s+['\"]([^'\"]+)['\"]", re.M)
_REFERENCE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)|\{([A-Z][A-Z0-9_]*)\}")


def _referenced(files: Sequence[str], seen: set | None = None) -> set[str]:
  """The macro names that gin files and the files they include refer to (%NAME, '{NAME}')."""
  seen = set() if seen is None else seen
  names = set()
  for path in files:
    if path in seen or not os.path.isfile(path):
      continue
    seen.add(path)
    with open(path, encoding="utf-8") as f:
      text = f.read()
    names |= {a or b for a, b in _REFERENCE.findall(text)}
    included = [_found(i, list(gin.config._LOCATION_PREFIXES)) for i in _INCLUDE.findall(text)]
    names |= _referenced(included, seen)
  return names


def check_macros(bindings: Sequence[str], files: Sequence[str] = ()) -> None:
  """A macro set by --gin_bindings (NUM_STEPS=4), or in one of the gin files the command names
  (not their includes, which set macros some experiments leave unused), that no setting uses is a
  ValueError naming the closest macro that is used: gin would otherwise ignore a misspelt one
  (NUM_STEP=4) silently."""
  used, defined = set(), {scope for scope, selector in gin.config._CONFIG if selector == "gin.macro"}
  for value in _bound_values():
    if isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
      used.add(_scope_of(value))
    elif isinstance(value, str):  # '{WORKDIR}/sft' (expand_folders)
      used.update(_PLACEHOLDER.findall(value))
  written = [(f"--gin_bindings={b!r}", b) for b in bindings]
  used |= _referenced(files)  # a macro whose uses the bindings replaced is not misspelt
  for path in files:
    with open(path, encoding="utf-8") as f:
      written += [(f"{path}:{n}", line) for n, line in enumerate(f, start=1) if not line.startswith((" ", "\t"))]
  for where, binding in written:
    match = _MACRO_BINDING.match(binding)
    if match and match.group(1) not in used:
      near = difflib.get_close_matches(match.group(1), sorted(used | defined - {match.group(1)}), n=1)
      hint = f"; did you mean {near[0]}?" if near else f"; macros in use: {sorted(used)}"
      raise ValueError(f"{where}: no setting uses the macro {match.group(1)}{hint}")


def _bound_stages() -> list[str]:
  try:
    return list(gin.query_parameter("run.stages"))
  except ValueError:  # not bound
    return []


def _check_workdir_macro() -> None:
  """The WORKDIR macro checked like a workdir: '{WORKDIR}/sft' with WORKDIR='' would be /sft."""
  try:
    value = gin.query_parameter("%WORKDIR")
  except ValueError:
    return
  if isinstance(value, str):
    checks.check_workdir("WORKDIR", value)


_SCOPED_BINDING = re.compile(r"^\s*([A-Za-z_][\w./]*)/[A-Za-z_][\w.]*\s*=")


def check_scopes(bindings: Sequence[str], entries: Sequence[str]) -> None:
  """A ValueError for a --gin_bindings scope that nothing runs in (`dop/run_dpo.beta=0.2` when the
  entries' scopes and the configurables referenced in a scope name no 'dop'), with the closest
  scope that is used: gin would ignore it silently."""
  used = {part for entry in entries for part in entry.split("/")[:-1]}
  for value in _bound_values():
    if isinstance(value, gin.config.ConfigurableReference) and value.selector != "gin.macro":  # %NAME is no scope
      used.update(value.scoped_selector.split("/")[:-1])
  for binding in bindings:
    match = _SCOPED_BINDING.match(binding)
    unknown = [p for p in match.group(1).split("/") if p not in used] if match else []
    if unknown:
      near = difflib.get_close_matches(unknown[0], sorted(used), n=1)
      hint = f"; did you mean {near[0]}?" if near else f"; scopes in use: {sorted(used) or 'none'}"
      raise ValueError(f"--gin_bindings={binding!r}: no stage runs in the scope {unknown[0]!r}{hint}")


def initialize_distributed(enabled: bool, coordinator_address=None, num_processes=None, process_id=None) -> None:
  """jax.distributed.initialize for multi-host runs; arguments left None are auto-detected."""
  if not enabled:
    return
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices across processes (else no-op)
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count())


def _main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for handler in logging.getLogger().handlers:  # absl's handler exists from here on
    handler.addFilter(_QuietLibraries())
  initialize_distributed(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  import jax

  if jax.process_index() > 0:
    logging.getLogger().setLevel(logging.WARNING)  # only process 0 writes logs
  if not FLAGS.verbose:
    _quiet_background_errors()
  try:
    parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    experiments = _experiments()  # with them, --stages picks the experiments' stages (run_command)
    if not experiments:  # a scope of the file's stages counts, even where --stages leaves it out
      check_scopes(FLAGS.gin_bindings, [*_bound_stages(), *(FLAGS.stages or [])])
      _check_workdir_macro()
    if FLAGS.stages and not experiments:
      gin.bind_parameter("run.stages", FLAGS.stages)
    if FLAGS.settings:
      tables = [settings_table(entry) for entry in gin.query_parameter("run.stages")]
      if experiments:  # they run first, each in <run.workdir>/<name>
        head = "== run.experiments: run first, each with this command's bindings (--settings on its file shows them) =="
        tables.insert(0, "\n".join([head] + [f"{name}: {file}" for name, file in experiments.items()]))
      print("\n\n".join(tables))
      return 0
    results = run_command(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths, FLAGS.stages)
  except (ValueError, OSError, TypeError, records.WorkdirBusy) as e:
    if FLAGS.verbose:
      traceback.print_exc()
    print(f"rlaif_jax: error: {error_line(e)}", file=sys.stderr)
    return 2
  except Exception as e:  # a stage that stopped on SIGTERM after saving, or a fault no check foresaw
    from rlaif_jax.trainer import Preempted

    if isinstance(e, Preempted):
      print(f"rlaif_jax: {e}", file=sys.stderr)
      return 143
    if FLAGS.verbose:
      traceback.print_exc()
    hint = "" if FLAGS.verbose else " (rerun with --verbose for the traceback)"
    print(f"rlaif_jax: error: {type(e).__name__}: {error_line(e)}{hint}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(
      "rlaif_jax: interrupted; what was saved is kept (labels, candidates and judgments up to their last chunk, "
      "training at its last checkpoint): rerun to resume",
      file=sys.stderr,
    )
    return 130
  if jax.process_index() > 0:  # one copy of the results, from process 0
    return 0
  _print_results(results)
  reports = [s["report"] for s in results.values() if isinstance(s, dict) and s.get("report")]
  if reports:
    print(f"\nReport: {reports[-1]}")
  return 0


def error_line(e: BaseException) -> str:
  """One line for an error that ends a command: what and where, and what to do for a full or
  read-only disk (--verbose prints the traceback)."""
  filename = os.fsdecode(e.filename) if isinstance(e, OSError) and e.filename is not None else None
  code = e.errno if isinstance(e, OSError) else None
  said = _OS_ERROR.search(str(e))  # as gin passes it on: a copy of the message, without errno and filename
  if isinstance(e, OSError) and code is None and said:
    code, filename = int(said.group(1)), said.group(2)
  if code in (errno.ENOSPC, errno.EDQUOT):
    return (
      f"no space left on the disk writing {filename or 'a file'}; free space and rerun: it resumes from what was saved"
    )
  if code == errno.EROFS:
    return f"cannot write {filename or 'a file'} (read-only file system); give the job a folder it may write (WORKDIR)"
  if code in (errno.EACCES, errno.EPERM):
    return f"{filename or 'a file'}: permission denied; give the job files it may read and a folder it may write"
  text = str(e) if not filename or filename in str(e) else f"{filename}: {e}"
  text = _GIN_CALL.sub("", text)  # gin adds the configurable each error passed through
  if "No space left on device" in text or "RESOURCE_EXHAUSTED: Error writing" in text:  # tensorstore's full disk
    where = re.search(r'"(/[^"]+)"', text)
    return f"no space left on the disk writing {where.group(1) if where else 'a checkpoint'}; free space and rerun: " \
      "it resumes from the last complete checkpoint (an unfinished one is not used)"  # fmt: skip
  return " ".join(text.split()) or type(e).__name__


def _quiet_background_errors() -> None:
  """Keeps what checkpointing's background threads print when a save fails (the same error again
  from orbax's thread and from asyncio per pending write, tensorstore's "Event loop is closed") off
  the terminal:
  the failure reaches the stage itself, which ends in one line. --verbose leaves them."""
  import threading

  default = threading.excepthook

  def thread_hook(args):
    frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback else []
    if any("orbax" in frame.filename for frame in frames):
      logging.debug("background thread %s: %r", args.thread and args.thread.name, args.exc_value)
    else:
      default(args)

  def closed_loop(hook):
    def quiet(*args):
      value = args[1] if len(args) > 1 else getattr(args[0], "exc_value", None)
      if not (isinstance(value, RuntimeError) and "Event loop is closed" in str(value)):
        hook(*args)

    return quiet

  threading.excepthook = thread_hook
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # "Task exception was never retrieved", per write
  sys.excepthook = closed_loop(sys.excepthook)
  sys.unraisablehook = closed_loop(sys.unraisablehook)


_OS_ERROR = re.compile(r"\[Errno (\d+)\] [^:]*: '([^']+)'")
_GIN_CALL = re.compile(r"\s*In call to configurable '[^']*' \(<[^>]*>\)")


def _print_results(results: dict) -> None:
  for stage, summary in results.items():
    if not isinstance(summary, dict):
      continue
    print(f"\n== {stage} ==")
    for key, value in summary.items():
      if key not in ("samples", "rows", "history", "policies", "tests", "ranking", "human_sheets"):
        print(f"{key}: {value}")
    if summary.get("rows"):
      _print_rows(summary["rows"])
    for i, sample in enumerate(summary.get("samples", [])):
      lines = [f"\n-- sample {i} --", sample["prompt"][-160:], f">> generated:{sample['generated']}"]
      if "reference" in sample:
        lines.append(f">> reference:{sample['reference']}")
      print("\n".join(lines))


def _print_rows(rows: list[dict]) -> None:
  columns = list(dict.fromkeys(k for r in rows for k in r if k != "skip_reasons"))
  table = [[str(r.get(c, "-")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
  print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
  for row in table:
    print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
  for r in rows:
    for reason, n in r.get("skip_reasons", {}).items():
      print(f"skipped in {r['task']}/{r['split']}: {n} x {reason}")


register_configurables()


class _QuietLibraries(logging.Filter):
  """Drops INFO chatter from orbax and the backend probe; warnings still pass. Orbax's reports of
  a failed background save (one per thread, each with its traceback) are dropped too: the failure
  reaches the stage, which ends in one line (--verbose keeps them)."""

  def filter(self, record: logging.LogRecord) -> bool:
    noisy = "orbax" in record.pathname or "xla_bridge" in record.pathname
    if noisy and record.exc_info and not FLAGS.verbose:
      return False
    return record.levelno >= logging.WARNING or not noisy


def main() -> None:
  """Console-script entry point (`rlaif-jax`)."""
  logging.getLogger().setLevel(logging.INFO)
  app.run(lambda argv: sys.exit(_main(argv)))


if __name__ == "__main__":
  main()
