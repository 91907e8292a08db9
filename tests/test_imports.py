"""Import hygiene of the library, read from the source with ``ast`` (nothing is imported): no module of ``spknet``
(the plugin folders included) imports a top-level script, and the imports between ``spknet``'s modules, those
inside functions too, form no cycle. A cycle works only while every module on it is imported in one order and
breaks when a user imports another of them first; an import inside a function only hides it until that runs."""

import ast
from pathlib import Path

import pytest

from spknet import PLUGIN_PACKAGES
from tests.helpers import REPO

# The repository's top level outside the library: commands, the original's module names, benchmarks and tests;
# ``core`` and ``tools`` are the folders the library was moved out of.
SCRIPTS = {"trainSpeakerNet", "inference", "dataprep", "quickstart", "DatasetLoader", "SpeakerNet", "tuneThreshold",
           "tools", "core", "benchmarks", "tests", "scripts", *PLUGIN_PACKAGES}

# (importer, imported) edges exempted from the cycle check: none. ``spknet/__init__.py`` imports spknet.inference
# on demand (``spknet.load_embedder``), so the library imports its constants from ``spknet.constants``.
PENDING: set = set()


def library_files() -> dict[str, Path]:
    """Module name -> source file: ``spknet/...`` and the plugin folders, which are ``spknet.<kind>``."""
    roots = [("spknet", REPO / "spknet")] + [(f"spknet.{kind}", REPO / kind) for kind in PLUGIN_PACKAGES]
    files = {}
    for prefix, root in roots:
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join((prefix, *parts))] = path
    return files


FILES = library_files()


def package_of(module: str) -> str:
    """The package a relative import in ``module`` starts from: itself for a package's ``__init__``."""
    return module if FILES[module].name == "__init__.py" else module.rpartition(".")[0]


def imports(module: str) -> list[tuple[str, int]]:
    """Every module ``module``'s file imports, anywhere in the file, with the line: ``import a.b`` gives ``a.b``;
    ``from a import b`` gives ``a.b`` when that is a module of the library, else ``a``; relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(FILES[module].read_text(), filename=str(FILES[module]))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package_of(module).split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule if submodule in FILES else base, node.lineno))
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    """Library module -> the library modules it imports (with the line), itself excluded."""
    return {module: sorted({(target, line) for target, line in imports(module) if target in FILES and target != module})
            for module in FILES}


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def describe(component: list[str], graph) -> str:
    edges = [f"  {FILES[source].relative_to(REPO)}:{line} imports {target}" for source in component
             for target, line in graph[source] if target in component]
    return "cycle " + " <-> ".join(component) + ":\n" + "\n".join(edges)


def test_the_library_files_are_found():
    assert {"spknet", "spknet.data", "spknet.data.audio", "spknet.loss", "spknet.loss._common", "spknet.loss.mp",
            "spknet.models.ResNetSE34L", "spknet.optimizer.sgd", "spknet.scheduler.steplr"} <= set(FILES)


def test_imports_are_resolved_relative_and_to_submodules():
    graph = dict(import_graph())
    assert "spknet.loss._common" in {target for target, _ in graph["spknet.loss.mp"]}          # from ._common
    assert "spknet.errors" in {target for target, _ in graph["spknet.plugins"]}                 # from spknet.errors
    assert "spknet.evaluation.metrics" in {target for target, _ in graph["spknet.evaluation"]}


@pytest.mark.parametrize("module", sorted(FILES))
def test_no_library_module_imports_a_top_level_script(module):
    bad = [f"{FILES[module].relative_to(REPO)}:{line} imports {target}" for target, line in imports(module)
           if target.split(".")[0] in SCRIPTS]
    assert not bad, "\n".join(bad)


def test_the_library_import_graph_has_no_cycle():
    graph = {source: [(target, line) for target, line in edges if (source, target) not in PENDING]
             for source, edges in import_graph().items()}
    found = cycles(graph)
    assert not found, "\n".join(describe(component, graph) for component in found)


def test_the_cycle_check_can_fail():
    graph = {"a": [("b", 1)], "b": [("c", 2)], "c": [("a", 3)], "d": [("a", 4)]}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": [("b", 1)], "b": []}) == []
