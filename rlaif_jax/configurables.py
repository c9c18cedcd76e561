"""What gin binds, for the command line: the library's parts and the stages, registered here as
gin configurables (the library never imports gin), and a pipeline entry's bindings: as written,
described for stages.json, and as the --settings table.

An entry is a stage name ("sft") or scope/stage ("rlhf/rl"): its stage then reads the bindings
under that gin scope as well. Importing this module registers the configurables.
"""

from __future__ import annotations

import dataclasses
import inspect

import gin

from rlaif_jax import generation, models, optimizers, sampling, scorers, trainer
from rlaif_jax import rl as rl_lib
from rlaif_jax import rrhf as rrhf_lib
from rlaif_jax.labeling import PromptConfig
from rlaif_jax.stages.registry import STAGES

CONFIGURED_STAGES: dict = {}  # stage name -> the gin-configured stage function


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
  ext(sampling.SamplingConfig, "RolloutSampling", module="rl")  # RL's own name, so entry scopes (oaif/) apply
  for role in ("sft", "rm", "dpo"):  # each training stage's cadence under its own name, as rollouts'
    ext(trainer.FitConfig, "Fit", module=role)
  ext(PromptConfig, "PromptConfig", module="labeling")
  ext(rrhf_lib.Sources, "Sources", module="rrhf")
  ext(rl_lib.RLConfig, "RLConfig", module="rl")
  for name in rl_lib.__all__:  # every estimator rl exports, as @rl.<Name> (its build)
    estimator = getattr(rl_lib, name)
    if isinstance(estimator, type) and rl_lib.Estimator in estimator.__mro__ and hasattr(estimator, "build"):
      ext(estimator.build, name, module="rl")
  ext(scorers.PairwiseScorer, "PairwiseScorer", module="scorers")
  for name, (fn, _) in STAGES.items():
    CONFIGURED_STAGES[name] = ext(fn, fn.__name__, module="stages")


def entry_bindings(entry: str, resolve: bool = False) -> dict:
  """The gin bindings of a pipeline entry's stage in the entry's scope: their values (resolve)
  or the references and macros as written."""
  scope, _, name = entry.rpartition("/")
  with gin.config_scope(scope or None):
    return gin.get_bindings(CONFIGURED_STAGES[name], resolve_references=resolve)


def reference_bindings(reference: gin.config.ConfigurableReference) -> dict:
  """The bindings of the configurable a reference names, in the reference's scope, as written."""
  with gin.config_scope(scope_of(reference) or None):
    return gin.get_bindings(reference.selector, resolve_references=False)


def scope_of(reference: gin.config.ConfigurableReference) -> str:
  """A reference's scope: for a macro (%NAME), its name."""
  return reference.scoped_selector.rpartition("/")[0]


def is_required(value) -> bool:
  """Whether a bound value is `%gin.REQUIRED`: a macro a recipe declares and leaves to the user."""
  return isinstance(value, gin.config.ConfigurableReference) and scope_of(value) == "gin.REQUIRED"


def required_macros(entry: str) -> list[str]:
  """The macros still `%gin.REQUIRED` that a pipeline entry's settings read, references followed."""
  found = []

  def walk(value):
    if isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
      bound = gin.query_parameter("%" + scope_of(value))
      found.extend([scope_of(value)] if is_required(bound) else [])
      walk(bound)
    elif isinstance(value, gin.config.ConfigurableReference) and not is_required(value):
      for v in reference_bindings(value).values():
        walk(v)
    elif isinstance(value, dict):
      for v in value.values():
        walk(v)
    elif isinstance(value, (list, tuple)):
      for v in value:
        walk(v)

  walk(entry_bindings(entry))
  return sorted(set(found))


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
      macro = scope_of(value)
      return {"%": macro, "value": _describe(gin.query_parameter("%" + macro))}
    return {
      "@": value.scoped_selector,
      "called": value.evaluate,
      **{k: _describe(v) for k, v in sorted(reference_bindings(value).items())},
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
      value = gin.query_parameter("%" + scope_of(value))  # what the macro stands for, its settings below
    if isinstance(value, gin.config.ConfigurableReference) and value.evaluate and not is_required(value):
      rows += _settings_rows(
        value.configurable.wrapped, reference_bindings(value), value.scoped_selector, indent + "    "
      )
  return rows


def _default(value) -> str:
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return f"{type(value).__name__}(...)"
  if callable(value) and hasattr(value, "__qualname__"):
    return value.__qualname__
  return repr(value)


def _shown(value) -> str:
  if is_required(value):
    return "<not set, required>"
  if isinstance(value, gin.config.ConfigurableReference):
    if value.selector == "gin.macro":
      macro = scope_of(value)
      return f"%{macro} = {_shown(gin.query_parameter('%' + macro))}"
    return f"@{value.scoped_selector}{'()' if value.evaluate else ''}"
  return repr(value)


register_configurables()
