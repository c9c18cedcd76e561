"""The architecture's rules (../shared/docs/DESIGN.md), checked on the source: imports run
downward, stages stay thin, and the public API is importable where docs/API.md says."""

import ast
import importlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "rlaif_jax"


def imports(path: pathlib.Path) -> set[str]:
  """Every module path the file imports (absolute, including `from x import y` as x.y)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)
  return out


def files(folder: str) -> list[pathlib.Path]:
  return sorted((PACKAGE / folder).glob("*.py"))


def test_no_stage_imports_another_stage():
  for path in files("stages"):
    assert not {m for m in imports(path) if m.startswith("rlaif_jax.stages")}, path.name


@pytest.mark.parametrize("folder", ["models", "reward"])
def test_models_and_reward_never_import_labeling(folder):
  for path in files(folder):
    assert not {m for m in imports(path) if m.startswith("rlaif_jax.labeling")}, path.name


def test_library_code_never_imports_a_stage_or_gin():
  for path in PACKAGE.rglob("*.py"):
    if "stages" in path.parts or path.name == "main.py":
      continue
    bad = {m for m in imports(path) if m.startswith("rlaif_jax.stages") or m == "gin" or m.startswith("gin.")}
    assert not bad, (path.relative_to(PACKAGE), bad)


def test_stage_functions_are_short():
  for path in files("stages"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.FunctionDef):
        length = node.end_lineno - node.lineno + 1
        assert length <= 80, f"{path.name}:{node.name} is {length} lines"
        if node.name == "run_rl":
          assert length < 60, f"run_rl is {length} lines"


API = {
  "rlaif_jax.labeling": ["preference_from_logits", "debias_preference", "direct_score"],
  "rlaif_jax.losses": ["soft_label_rm_loss", "rrhf_rank_loss", "soft_dpo_loss", "soft_ipo_loss"],
  "rlaif_jax.rl": ["reinforce_targets", "rloo_advantages", "grpo_advantages", "gae_advantages", "ppo_policy_loss"],
  "rlaif_jax.metrics": ["alignment_accuracy"],
}


@pytest.mark.parametrize("module", sorted(API))
def test_public_api_is_importable_where_the_docs_say(module):
  mod = importlib.import_module(module)
  for name in API[module]:
    assert callable(getattr(mod, name)), f"{module}.{name}"
