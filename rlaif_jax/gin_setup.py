"""A command's gin configuration: its files and bindings parsed and checked, and run.

gin ignores much that is surely a mistake, so parse_gin turns what it would ignore or report
obscurely into a ValueError that names the setting: a binding it cannot parse or a parameter
no stage has (with the closest one), gin files that include each other, a macro set that no
setting uses (check_macros) and a binding in a scope nothing runs in (check_scopes). It also
replaces {NAME} in string settings by the string macro NAME (expand_folders), so an
experiment's folders all follow WORKDIR. run_command runs the command: its experiments
(run.experiments), each parsed as a command of its own, then its own stages (pipeline.run).

Only this module reads gin's private state (config._CONFIG, config._LOCATION_PREFIXES): gin has
no public way to list every binding and macro, which the checks and the expansion need.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import os
import re
import tokenize
from collections.abc import Sequence

import gin

from rlaif_jax import configurables, pipeline
from rlaif_jax.stages import base
from rlaif_jax.stages.registry import STAGES


def run_command(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str], stages=None) -> dict:
  """The command's configuration, parsed: its run.experiments (name -> gin file) first, each as a
  command of its own with the same bindings and WORKDIR = <run.workdir>/<name> (and `stages`, if
  given, as its stages), then the configuration's own stages, e.g. one report over them
  (gin/experiments/tiny_three_tasks.gin). Without experiments: pipeline.run()."""
  experiments = bound_experiments()
  if not experiments:
    return pipeline.run()
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
    results.update({f"{name}: {entry}": summary for entry, summary in pipeline.run().items()})
  gin.clear_config()
  parse_gin(files, bindings, search_paths)
  return results | pipeline.run()


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
  if not bound_experiments():  # a command of experiments: each of them checks the bindings it is given
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
  known = inspect.signature(stage_fn).parameters if stage_fn else {}
  inner = [k for k, p in known.items() if parameter in _fields(p.default)]
  if inner:  # a field of a config the stage takes (run_sft.fit's checkpoint_every: sft.Fit.checkpoint_every)
    return f"{name} has no setting {parameter!r}; it is {_config_field(name, inner[0], parameter)}"
  near = difflib.get_close_matches(parameter, list(known), n=1)
  return f"{name} has no setting {parameter!r}" + (f"; did you mean {near[0]}?" if near else "")


def _fields(default) -> set[str]:
  """The field names of a dataclass instance (a config a stage takes as an argument's default), else none."""
  if not dataclasses.is_dataclass(default) or isinstance(default, type):
    return set()
  return {f.name for f in dataclasses.fields(default)}


def _config_field(stage: str, argument: str, field: str) -> str:
  """Where a field of a stage's config argument is bound: through the configurable the gin files
  bind the argument to, else the argument itself."""
  try:
    bound = gin.query_parameter(f"{stage}.{argument}")
  except ValueError:
    bound = None
  if isinstance(bound, gin.config.ConfigurableReference):
    return f"{bound.scoped_selector}.{field}"
  return f"a field of {stage}.{argument}"


def bound_experiments() -> dict:
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
      used.add(configurables.scope_of(value))
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


def bound_stages() -> list[str]:
  """run.stages as bound, or []."""
  try:
    return list(gin.query_parameter("run.stages"))
  except ValueError:  # not bound
    return []


def check_workdir_macro() -> None:
  """The WORKDIR macro checked like a workdir: '{WORKDIR}/sft' with WORKDIR='' would be /sft."""
  try:
    value = gin.query_parameter("%WORKDIR")
  except ValueError:
    return
  if isinstance(value, str):
    base.check_workdir("WORKDIR", value)


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
