"""The import contract of ARCHITECTURE.md: the core (``csound_assistant/``'s own modules) imports
no stage; a stage imports the core and the stages before it, never one after it; and no two
modules import each other. Read from the source with ``ast``, so an import inside a function
counts as much as one at the top: a lazy import only hides an arrow, it does not remove it.

A new stage folder must be given a place in LAYERS (a test says so), and every exception to the
layers is listed below with its reason.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "csound_assistant"

# Bottom to top. A module may import its own layer and the layers below it.
LAYERS = ("core", "base", "data", "train", "convert", "modelfiles", "runtime", "eval", "improve",
          "editors", "orchestration")
# csound_assistant's own modules that run the stages, not ones the stages stand on.
ORCHESTRATION = {"cli", "pipeline", "pipeline_config", "pipeline_stages"}

# (importer, imported module) -> why this arrow against the layers stays for now. None do.
EXCEPTIONS: dict[tuple[str, str], str] = {}
# Imports that close a cycle (two modules reaching each other) -> why it stays for now. Each is
# left out before cycles are looked for. None do.
CYCLE_EXCEPTIONS: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    if parts[1] in ORCHESTRATION:
        return "orchestration"
    return parts[1] if parts[1] in LAYERS else "core"


def module_files(root: Path) -> dict[str, Path]:
    """Module name -> source file, for the core and every stage folder of LAYERS under ``root``
    (``train/recipe.py`` is installed as ``csound_assistant.train.recipe``)."""
    folders = {PACKAGE: root / PACKAGE}
    folders |= {f"{PACKAGE}.{stage}": root / stage for stage in LAYERS if (root / stage).is_dir()}
    modules = {}
    for prefix, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            parts = [*prefix.split("."), *path.relative_to(folder).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported project module) for every import in ``path``, at any depth."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from x import y` imports the module x.y when there is one, else x
            names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and (node.lineno, name) not in found:
                found.append((node.lineno, name))
    return found


def import_graph(root: Path) -> dict[str, list[tuple[int, str]]]:
    modules = module_files(root)
    return {m: imports_of(m, path, set(modules)) for m, path in modules.items()}


def wrong_arrows(graph: dict, exceptions: dict = EXCEPTIONS) -> list[str]:
    """Every import of a later layer (or of orchestration from below), as ``module:line``."""
    wrong = []
    for module, edges in graph.items():
        for line, target in edges:
            own, theirs = LAYERS.index(layer_of(module)), LAYERS.index(layer_of(target))
            if theirs > own and (module, target) not in exceptions:
                wrong.append(f"{module}:{line} imports {target}: layer {LAYERS[own]!r} may not "
                             f"import {LAYERS[theirs]!r} (move the shared code down into the "
                             "core, or list the arrow in EXCEPTIONS with why)")
    return wrong


def without(graph: dict, arrows) -> dict:
    return {m: [(line, t) for line, t in edges if (m, t) not in arrows]
            for m, edges in graph.items()}


def cycles(graph: dict) -> list[frozenset[str]]:
    """Groups of modules that reach each other through imports (Tarjan's strongly connected
    components of more than one module)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for _, target in graph.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(frozenset(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT)


def test_no_module_imports_a_later_layer(graph):
    wrong = wrong_arrows(graph)
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles(graph):
    found = [sorted(group) for group in cycles(without(graph, CYCLE_EXCEPTIONS))]
    assert not found, f"modules that import each other (lazily or not): {found}; move what " \
                      "they share into a module both import"


def test_every_exception_is_still_needed(graph):
    edges = {(m, target) for m, targets in graph.items() for _, target in targets}
    stale = [pair for pair in EXCEPTIONS if pair not in edges]
    acyclic = without(graph, CYCLE_EXCEPTIONS)
    stale += [(a, b) for a, b in CYCLE_EXCEPTIONS if (a, b) not in edges
              or not any({a, b} <= group for group in cycles(
                  {**acyclic, a: [*acyclic.get(a, []), (0, b)]}))]
    assert not stale, f"no longer needed: delete {stale} from tests/test_layers.py"


def test_every_installed_package_has_a_layer():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    stages = {name.split(".")[1] for name in setup["package-dir"] if name != PACKAGE}
    missing = stages - set(LAYERS)
    assert not missing, f"stage folders without a layer: {missing}; add each to LAYERS in " \
                        "tests/test_layers.py and to ARCHITECTURE.md"


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def tree(tmp_path):
    for folder in (PACKAGE, "data", "runtime", "eval"):
        write(tmp_path, f"{folder}/__init__.py", "")
    write(tmp_path, f"{PACKAGE}/sandbox.py", "def check(code): ...\n")
    write(tmp_path, "eval/extract.py", "def extract_code(answer): ...\n")
    write(tmp_path, "runtime/server.py", "from csound_assistant.eval import extract\n")
    return tmp_path


def test_a_core_module_importing_a_stage_inside_a_function_fails(tree):
    write(tree, f"{PACKAGE}/repair.py", "from . import sandbox\n\n\ndef diagnose(answer):\n"
                                        "    from csound_assistant.eval.extract import "
                                        "extract_code\n")
    wrong = wrong_arrows(import_graph(tree), exceptions={})
    assert any(re.match(r"csound_assistant\.repair:5 imports csound_assistant\.eval\.extract: "
                        r"layer 'core' may not import 'eval'", w) for w in wrong), wrong
    # runtime/server.py -> eval is also later: both are reported at once
    assert any(w.startswith("csound_assistant.runtime.server:1 ") for w in wrong), wrong


def test_a_stage_importing_an_earlier_stage_or_the_core_passes(tree):
    write(tree, "runtime/server.py", "from csound_assistant import sandbox\n")
    write(tree, "eval/runner.py", "from ..runtime import server\nfrom .extract import "
                                  "extract_code\n")
    write(tree, "data/rows.py", "import csound_assistant.sandbox\n")
    graph = import_graph(tree)
    assert ("csound_assistant.runtime.server" in {t for _, t in
                                                   graph["csound_assistant.eval.runner"]})
    assert wrong_arrows(graph, exceptions={}) == []


def test_an_import_cycle_hidden_in_a_function_is_found(tree):
    write(tree, "runtime/server.py", "from .api import routes\n\n\ndef new_id(): ...\n")
    write(tree, "runtime/api.py", "def routes():\n    from .server import new_id\n")
    assert cycles(import_graph(tree)) == [frozenset({"csound_assistant.runtime.server",
                                                     "csound_assistant.runtime.api"})]


# The data stage's modules that make row text, and the core modules they import that cannot
# change a row (so a change to them need not rebuild the data).
ROW_MAKERS = ("build", "csdcode", "examples", "minimal", "patches", "rows", "verify")
NO_ROW_TEXT = {"csound_assistant.artifacts": "file writing and the render cache's folder",
               "csound_assistant.errors": "exception classes",
               "csound_assistant.prompt_format": "build.py names a row's kind for the record",
               "csound_assistant.stage_records": "build.py writes the record"}


def test_the_data_stage_key_hashes_every_core_module_the_rows_come_from(graph):
    from csound_assistant.pipeline_stages import data_code_files

    hashed = {path.resolve() for path in data_code_files()}
    files = module_files(ROOT)
    used = {target for maker in ROW_MAKERS for _, target in graph[f"{PACKAGE}.data.{maker}"]
            if layer_of(target) == "core" and target != PACKAGE}
    missing = sorted(m for m in used - set(NO_ROW_TEXT) if files[m].resolve() not in hashed)
    assert not missing, f"the data rows depend on {missing}, which data_code_files() in " \
                        "csound_assistant/pipeline_stages.py does not hash: a change to them " \
                        "would not rebuild the data. Add them there (or to NO_ROW_TEXT, with why)"
