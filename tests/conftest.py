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


def all_pairs(choices: dict[str, list[str]]) -> list[dict[str, str]]:
    """Combinations of the choice options that contain every pair of values at least once.

    The options interact in pairs (storage and broker both shape the settings, ci
    and python_version the workflow), so covering every pair finds what the full
    product would, in a quarter of the bakes. Greedy and deterministic: the first
    combination (every option's default) comes first.
    """
    names = list(choices)

    def pairs(values) -> set:
        return {(a, values[a], b, values[b]) for a, b in itertools.combinations(names, 2)}

    candidates = [dict(zip(names, values, strict=True)) for values in itertools.product(*choices.values())]
    uncovered = set().union(*(pairs(candidate) for candidate in candidates))
    chosen = []
    while uncovered:
        best = max(candidates, key=lambda candidate: len(pairs(candidate) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


# Every pair of choice values (python_version, ci, storage, broker), each in some bake.
MATRIX = all_pairs(CHOICES)

POSTGRES = ("127.0.0.1", int(os.environ.get("POSTGRES_PORT", "5432")))
REDIS = ("127.0.0.1", int(os.environ.get("REDIS_PORT", "6379")))
RABBITMQ = ("127.0.0.1", int(os.environ.get("RABBITMQ_PORT", "5672")))


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
    """Postgres, Redis and RabbitMQ on this machine. Missing: fail in CI, skip elsewhere."""
    wanted = (("Postgres", POSTGRES), ("Redis", REDIS), ("RabbitMQ", RABBITMQ))
    missing = [name for name, address in wanted if not reachable(address)]
    if missing:
        message = f"{' and '.join(missing)} not reachable on 127.0.0.1 (./scripts/test starts them when installed)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return {"postgres": POSTGRES, "redis": REDIS, "rabbitmq": RABBITMQ}


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
