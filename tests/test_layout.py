"""The architecture's rules (docs/DESIGN.md), checked on the source: imports run
downward, stages stay thin, and the public API is importable where docs/API.md says. And the
docs themselves: the README stays a front page, and every link in it and in docs/ leads somewhere."""

import ast
import importlib
import pathlib
import re

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
  """Stages share only what every stage wears (stages/base.py: the `stage` decorator). registry.py
  is no stage: it names every stage for the command line, so it imports them all."""
  for path in files("stages"):
    if path.name == "registry.py":
      continue
    others = {
      m for m in imports(path) if m.startswith("rlaif_jax.stages") and not m.startswith("rlaif_jax.stages.base")
    }
    assert not others, path.name


def _modules() -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every module and package of the library."""
  found = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return found


def import_graph() -> dict[str, set[str]]:
  """module -> the library modules it imports, function-level imports included. Importing a.b.c
  runs a and a.b first, so their __init__s count too, but not a module's own packages (already
  running when it is imported)."""
  modules = _modules()

  def known(name: str) -> str | None:  # `from a.b import f` names a.b.f: the longest module prefix
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name or None

  graph = {}
  for module, path in modules.items():
    edges = set()
    for name in map(known, imports(path)):
      while name and name != module and not module.startswith(name + "."):
        edges.add(name)
        name = name.rpartition(".")[0] if "." in name else None
    graph[module] = edges - {"rlaif_jax"}
  return graph


def test_no_import_cycles_function_level_imports_included():
  """A cycle hidden behind a function-level import still ties its modules into one layer: each
  module's imports, followed, never lead back to it."""
  graph = import_graph()
  for start in graph:
    seen, todo = set(), [(start, (start,))]
    while todo:
      module, path = todo.pop()
      for nxt in graph[module]:
        assert nxt != start, "import cycle: " + " -> ".join((*path, nxt))
        if nxt not in seen:
          seen.add(nxt)
          todo.append((nxt, (*path, nxt)))


def test_import_graph_sees_function_level_and_package_imports():
  graph = import_graph()
  assert "rlaif_jax.checkpoints" in graph["rlaif_jax.models.source"]  # only imported inside methods
  assert "rlaif_jax.labeling" in graph["rlaif_jax.stages.base"]  # the package of labeling.jobs
  assert "rlaif_jax.models" not in graph["rlaif_jax.models.pretrained"]  # its own package


def test_argument_checks_are_the_ground_floor():
  assert not {m for m in imports(PACKAGE / "checks.py") if m.startswith("rlaif_jax")}


@pytest.mark.parametrize("folder", ["models", "reward"])
def test_models_and_reward_never_import_labeling(folder):
  for path in files(folder):
    assert not {m for m in imports(path) if m.startswith("rlaif_jax.labeling")}, path.name


# The command line: main.py and the modules it is split into, above stages/ as DESIGN.md's main.py is
# (configurables registers the library's parts and the stages with gin, gin_setup parses and checks a
# command's configuration, pipeline runs its entries). errors.py, which main also uses, reads no gin.
CLI = {"main.py", "configurables.py", "gin_setup.py", "pipeline.py"}


def test_library_code_never_imports_a_stage_or_gin():
  """Only stages/ and the command line's modules (CLI, top-level files of the package) read gin or
  import a stage; everything below them runs from plain arguments."""
  for path in PACKAGE.rglob("*.py"):
    if "stages" in path.parts or (path.parent == PACKAGE and path.name in CLI):
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


ROOT = PACKAGE.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_a_front_page():
  """The README stays a front page: the manual is in docs/."""
  size = (ROOT / "README.md").stat().st_size
  assert size <= 15360, f"README.md is {size} bytes; move the detail into docs/ (at most 15360)"


def _prose(text: str) -> str:
  """Markdown without its fenced blocks and code spans, where a link is not a link."""
  text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
  return re.sub(r"`[^`\n]*`", "", text)


def _anchors(text: str) -> set[str]:
  """GitHub's anchors for a page's headings: lowercase, punctuation dropped, spaces as hyphens."""
  out, seen = set(), {}
  for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S), re.M):
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
    seen[slug] = seen.get(slug, 0) + 1
  return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_of_the_docs_leads_somewhere(page):
  """Every `[text](path)` of README.md and docs/*.md that is not a web address names a file of this
  repository, and its `#anchor`, where it has one, a heading of that page."""
  links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8")))
  assert page.name != "README.md" or links, "the README links to no docs"
  for link in links:
    if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
      continue
    path, _, anchor = link.partition("#")
    target = (page.parent / path).resolve() if path else page
    assert target.is_relative_to(ROOT) and target.exists(), f"{page.name}: {link} names no file of the repository"
    if anchor and target.suffix == ".md":
      assert anchor in _anchors(target.read_text(encoding="utf-8")), f"{page.name}: {link}: no such heading"


def test_nothing_points_outside_the_repository():
  """No page, docstring, test, benchmark or config sends a reader (or reads a file) outside the
  clone: the team's documents are in docs/, the real hh-rlhf sample in the package's fixtures."""
  sources = [*PAGES, *ROOT.glob("rlaif_jax/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py")]
  sources += [*ROOT.glob("gin/**/*.gin"), *ROOT.glob("tasks/*.py"), ROOT / "setup.py", ROOT / ".ci" / "run"]
  outside = ("../" + "shared", '"shared", "' + "data")  # spelt in pieces so this file does not name them
  assert not [str(p.relative_to(ROOT)) for p in sources if any(o in p.read_text(encoding="utf-8") for o in outside)]
