import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from illume.cli import PACKAGES as CLI_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
# The eight distributions, in dependency order (the list the `illume --version` command uses).
PACKAGES = list(CLI_PACKAGES)


def pyproject(dist: str) -> dict:
    return tomllib.loads((ROOT / "packages" / dist / "pyproject.toml").read_text())


@pytest.fixture(scope="session")
def built_dists(tmp_path_factory) -> Path:
    """sdist + wheel of every package, built once per session without network (no isolation)."""
    out = tmp_path_factory.mktemp("dist")
    for dist in PACKAGES:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "build",
                "--no-isolation",
                "--outdir",
                str(out),
                str(ROOT / "packages" / dist),
            ],
            check=True,
            capture_output=True,
        )
    return out
