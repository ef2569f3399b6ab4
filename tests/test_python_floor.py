"""One Python floor everywhere, and the baked suites run on it.

The floor is the oldest `python_version` a user can pick. The template's README and
`scripts/test` ask for it, every bake's `requires-python` and ruff target are it (the
option only picks the Docker image and CI's Python), the baked README tells it, and
CI runs the baked projects' suites (tests/test_generated_suite.py) with it.
"""

import json
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHOICES = json.loads((ROOT / "cookiecutter.json").read_text())["python_version"]
FLOOR = min(CHOICES, key=lambda version: tuple(map(int, version.split("."))))
MAJOR, MINOR = map(int, FLOOR.split("."))


def test_template_readme_and_test_script_ask_for_the_floor():
    assert f"needs Python {FLOOR}+" in (ROOT / "README.md").read_text()
    script = (ROOT / "scripts/test").read_text()
    assert f"sys.version_info < ({MAJOR}, {MINOR})" in script
    assert f"Python {FLOOR} or newer is needed" in script


@pytest.mark.parametrize("python_version", CHOICES)
def test_every_bake_declares_the_floor(cookies, python_version):
    result = cookies.bake(extra_context={"python_version": python_version})
    assert result.exit_code == 0, result.exception

    pyproject = tomllib.loads((result.project_path / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={FLOOR}"
    assert pyproject["tool"]["ruff"]["target-version"] == f"py{MAJOR}{MINOR}"
    readme = (result.project_path / "README.md").read_text()
    assert f"Natively (Python {FLOOR}+" in readme
    assert re.findall(r"Python (3\.\d+)\+", readme) == [FLOOR]
    # The option still picks the image.
    assert f"ARG PYTHON_VERSION={python_version}" in (result.project_path / "Dockerfile").read_text()


def test_ci_runs_the_baked_suites_on_the_floor():
    """The baked suites run with this interpreter: in CI it must be the floor itself."""
    if not os.environ.get("CI"):
        pytest.skip(f"outside CI the suites run on whatever Python made .venv (here {sys.version.split()[0]})")
    assert sys.version_info[:2] == (MAJOR, MINOR), (
        f"CI runs on Python {sys.version_info.major}.{sys.version_info.minor}, not the floor {FLOOR}: "
        f"create .venv with the floor (PYTHON=python{FLOOR} ./scripts/test)"
    )
