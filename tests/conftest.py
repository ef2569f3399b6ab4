"""Fixtures for testing the template: bake projects and run commands inside them."""

import itertools
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parent.parent
CHOICES = {
    key: value
    for key, value in json.loads((TEMPLATE / "cookiecutter.json").read_text()).items()
    if isinstance(value, list) and not key.startswith("_")
}
# Every combination of the choice options (python_version x ci x storage).
MATRIX = [dict(zip(CHOICES, values, strict=True)) for values in itertools.product(*CHOICES.values())]

POSTGRES = ("127.0.0.1", int(os.environ.get("POSTGRES_PORT", "5432")))
REDIS = ("127.0.0.1", int(os.environ.get("REDIS_PORT", "6379")))


def matrix_id(context: dict) -> str:
    return "-".join(f"{value}" for value in context.values())


def run(args, cwd, env=None, timeout=900) -> subprocess.CompletedProcess:
    """Run a command in the baked project with this virtualenv's tools first on PATH."""
    environment = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    environment |= env or {}
    return subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout, check=False)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{' '.join(map(str, result.args))} failed:\n{result.stdout}\n{result.stderr}"


def reachable(address) -> bool:
    try:
        with socket.create_connection(address, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def services():
    """Postgres and Redis on this machine. Missing: fail in CI, skip elsewhere."""
    missing = [name for name, address in (("Postgres", POSTGRES), ("Redis", REDIS)) if not reachable(address)]
    if missing:
        message = f"{' and '.join(missing)} not reachable on 127.0.0.1 (./scripts/test starts them when installed)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return {"postgres": POSTGRES, "redis": REDIS}


@dataclass(frozen=True)
class Baked:
    path: Path
    context: dict


@pytest.fixture(scope="session", params=MATRIX, ids=matrix_id)
def baked(request, cookies_session) -> Baked:
    """A project baked with one combination of options (once per session)."""
    result = cookies_session.bake(extra_context=request.param)
    assert result.exit_code == 0, result.exception
    return Baked(result.project_path, result.context)
