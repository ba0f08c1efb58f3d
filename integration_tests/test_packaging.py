"""Every package builds, declares exactly what it needs, and the light ones install without torch."""

import email
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest
from packaging.requirements import Requirement

from .conftest import PACKAGES, ROOT, pyproject


def _normalise(lines: list[str]) -> set[str]:
    return {str(Requirement(line)) for line in lines}


def _declared(dist: str) -> set[str]:
    project = pyproject(dist)["project"]
    lines = list(project.get("dependencies", []))
    for extra, reqs in project.get("optional-dependencies", {}).items():
        lines += [f'{req}; extra == "{extra}"' for req in reqs]
    return _normalise(lines)


def _wheel_metadata(built, dist: str) -> email.message.Message:
    (wheel,) = built.glob(f"{dist.replace('-', '_')}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(name))


def _sdist_metadata(built, dist: str) -> email.message.Message:
    (sdist,) = built.glob(f"{dist.replace('-', '_')}-*.tar.gz")
    with tarfile.open(sdist) as archive:
        member = next(
            m
            for m in archive.getmembers()
            if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")
        )
        return email.message_from_bytes(archive.extractfile(member).read())


@pytest.mark.parametrize("dist", PACKAGES)
def test_wheel_and_sdist_declare_exactly_the_dependencies(built_dists, dist):
    declared = _declared(dist)
    assert declared, f"{dist} declares no dependencies"
    for meta in (_wheel_metadata(built_dists, dist), _sdist_metadata(built_dists, dist)):
        assert meta["Name"] == dist
        assert meta["Version"] == "0.1.0"
        assert _normalise(meta.get_all("Requires-Dist") or []) == declared


def test_the_eval_wheel_ships_the_shapes_foundations(built_dists):
    (wheel,) = built_dists.glob("illume_eval-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    encoder = "illume_eval/shapes/foundations/encoder/"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"):
        assert encoder + name in names
    language_model = "illume_eval/shapes/foundations/language_model/"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert language_model + name in names


@pytest.mark.parametrize("dist", PACKAGES)
def test_every_wheel_says_it_is_typed(built_dists, dist):
    """PEP 561: type checkers read a package's annotations only when it ships py.typed."""
    (wheel,) = built_dists.glob(f"{dist.replace('-', '_')}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert f"{dist.replace('-', '_')}/py.typed" in archive.namelist()


@pytest.mark.parametrize("dist", PACKAGES)
def test_layout_of_each_package(dist):
    folder = ROOT / "packages" / dist
    module = dist.replace("-", "_")
    for name in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        f"src/{module}/__about__.py",
        "tests",
    ):
        assert (folder / name).exists(), f"{dist} lacks {name}"
    assert pyproject(dist)["build-system"]["build-backend"] == "hatchling.build"
    for req in pyproject(dist)["project"]["dependencies"]:
        if req.startswith("illume"):
            assert ">=" in req and "==" not in req, (
                f"{dist}: internal dependency {req} must be a >= bound"
            )


def test_every_package_folder_is_known():
    assert sorted(p.name for p in (ROOT / "packages").iterdir() if p.is_dir()) == sorted(PACKAGES)


def test_illume_version_lists_the_eight_packages():
    result = subprocess.run(
        [sys.executable, "-m", "illume.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:8]] == PACKAGES
    assert all(line.split()[1] == "0.1.0" for line in lines[:8])


@pytest.mark.slow  # a venv and two installs: ~6 s
def test_core_and_eval_install_and_import_without_torch(built_dists, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--find-links",
            str(built_dists),
            "-c",
            str(ROOT / "tools" / "constraints.txt"),
            "illume-eval",
        ],
        check=True,
    )
    check = (
        "import importlib.util, sys\n"
        "import illume_core, illume_eval, illume_eval.shapes.evaluation\n"
        "from illume_core import load_image, save_checkpoint, load_checkpoint\n"
        "import numpy as np, tempfile\n"
        "d = tempfile.mkdtemp()\n"
        "save_checkpoint(d, {'a': 1}, {'w': np.ones(3, np.float32)})\n"
        "assert load_checkpoint(d, framework='numpy')[1]['w'].sum() == 3\n"
        "assert load_image(np.zeros((2, 2, 3), np.uint8)).size == (2, 2)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert importlib.util.find_spec('torch') is None, 'torch is installed'\n"
        "print('ok')\n"
    )
    result = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def _imported_distributions(dist: str) -> dict[str, str]:
    """{distribution: a module of `dist` that imports it}, for every absolute import in its
    source (functions' lazy imports too), the standard library and `dist` itself left out."""
    import ast
    from importlib.metadata import packages_distributions

    # ours are installed editable, which packages_distributions does not see
    owners = packages_distributions() | {d.replace("-", "_"): [d] for d in PACKAGES}
    module = dist.replace("-", "_")
    found: dict[str, str] = {}
    for path in sorted((ROOT / "packages" / dist / "src" / module).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__" or top == module:
                    continue
                # one not installed here (tensorrt on a CPU machine) is named as it is imported
                for owner in owners.get(top, [top]):
                    found.setdefault(Requirement(owner).name.lower().replace("_", "-"), str(path))
    return found


def _declared_names(dist: str) -> set[str]:
    return {
        Requirement(line.split(";")[0]).name.lower().replace("_", "-") for line in _declared(dist)
    }


@pytest.mark.parametrize("dist", PACKAGES)
def test_each_distribution_declares_every_package_its_modules_import(dist):
    """An import that works only because another dependency happens to pull its package in
    breaks the day that dependency stops: every one is declared (extras count)."""
    undeclared = {
        name: module
        for name, module in _imported_distributions(dist).items()
        if name not in _declared_names(dist)
    }
    assert not undeclared, f"{dist} imports undeclared distributions: {undeclared}"


def test_the_mllm_wheel_ships_its_chat_templates(built_dists):
    (wheel,) = built_dists.glob("illume_mllm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for family in ("vicuna", "shapes", "chatml"):
        assert f"illume_mllm/chat_templates/{family}.jinja" in names
