"""The package graph holds: every import of every module (at the top or inside a function) is of the
standard library, the package itself, or a distribution its pyproject.toml declares; and the model
packages never import the layers above them (trainer, runtime, the umbrella)."""

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

PACKAGES = Path(__file__).resolve().parents[1] / "packages"
#: The model packages: what teams reuse alone (a tokenizer, an MLLM) must not pull in training,
#: export or the CLI.
MODEL_PACKAGES = (
    "illume-core",
    "illume-eval",
    "illume-tokenizer",
    "illume-detokenizer",
    "illume-mllm",
)
ABOVE_THE_MODELS = ("illume-trainer", "illume-runtime", "illume")


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _declared(pyproject: dict) -> set[str]:
    project = pyproject["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra  # imported only where the extra is installed
    return {_normalize(Requirement(r).name) for r in requirements}


def _imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _distributions_of(module: str) -> set[str]:
    """The distributions that provide an importable name; one not installed here (an optional
    extra such as tensorrt) is taken to be its own distribution's name."""
    if module == "illume" or module.startswith("illume_"):
        return {_normalize(module)}
    return {_normalize(d) for d in packages_distributions().get(module, [module])}


def _packages():
    return sorted(p for p in PACKAGES.iterdir() if (p / "pyproject.toml").is_file())


@pytest.mark.parametrize("package", _packages(), ids=lambda p: p.name)
def test_every_import_is_declared(package):
    pyproject = tomllib.loads((package / "pyproject.toml").read_text())
    own = _normalize(pyproject["project"]["name"])
    declared = _declared(pyproject) | {own}
    undeclared = {}
    for path in sorted((package / "src").rglob("*.py")):
        for module in _imports(path):
            if module in sys.stdlib_module_names or module == "__future__":
                continue
            if not _distributions_of(module) & declared:
                undeclared.setdefault(module, []).append(path.name)
    assert not undeclared, f"{own} imports what it does not declare: {undeclared}"


@pytest.mark.parametrize("package", MODEL_PACKAGES)
def test_model_packages_never_import_the_layers_above_them(package):
    above = {name.replace("-", "_") for name in ABOVE_THE_MODELS}
    found = {
        f"{path.relative_to(PACKAGES)}: {module}"
        for path in (PACKAGES / package / "src").rglob("*.py")
        for module in _imports(path)
        if module in above
    }
    assert not found, found
    pyproject = tomllib.loads((PACKAGES / package / "pyproject.toml").read_text())
    assert not _declared(pyproject) & set(ABOVE_THE_MODELS)


def test_the_checks_see_an_undeclared_import(tmp_path):
    """The scan finds imports inside functions too (where the heavy ones live)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import onnxruntime\n    from illume_runtime import x\n")
    assert _imports(module) == {"onnxruntime", "illume_runtime"}
    assert _distributions_of("illume_runtime") == {"illume-runtime"}


def _module_graph() -> dict[str, set[str]]:
    """Every module of every package -> the modules of ours it imports (at the top or inside a
    function; a package's `__init__` re-exporting its own submodules is not an edge back)."""
    paths = {}
    for path in PACKAGES.glob("*/src/**/*.py"):
        parts = list(path.with_suffix("").parts[path.parts.index("src") + 1 :])
        if parts[-1] == "__init__":
            parts = parts[:-1]
        paths[".".join(parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package[: len(package) - node.level + 1] + ([base] if base else [])
                    )
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in paths:
                    target = target.rpartition(".")[0]
                # a module's own package (its __init__) and a package's own submodules: no edge
                inside = name.startswith(target + ".") or target.startswith(name + ".")
                if target and target != name and not inside:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    return found


def test_no_module_imports_one_that_imports_it_back():
    """No import cycles between modules, lazy imports inside functions included: each module's
    place in the layers is plain from what it imports."""
    graph = _module_graph()
    assert {"illume.demo", "illume.chain", "illume_mllm.sampling"} <= set(graph)
    assert "illume_mllm.generation" in graph["illume_mllm.sampling"]
    assert not _cycles(graph), _cycles(graph)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
