"""Fixtures for the compose suite: bake as a normal user, get the images, run the stacks.

Docker missing fails the suite in CI (``CI`` set) and skips it elsewhere, with one
line saying what to do; ``./scripts/test`` installs and starts Docker when it can.
A failing test gets the stack's service logs attached to its report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import TEMPLATE
from . import images
from .stack import Stack, docker_problem, free_port

# The user who owns the checkout in these tests. CI runs as root, but a user's files
# belong to a normal user: the project is theirs, and the tests prove that the
# containers write into the source tree as that user.
BAKER_UID = 1000


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(item.fspath).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.compose)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and call.when in ("call", "setup"):
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Stack):
                report.sections.append((f"compose logs ({value.path.name})", value.logs(tail=150)))
    return report


@pytest.fixture(scope="session")
def docker_ready():
    problem = docker_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)


def bake(tmp_path_factory, **context) -> Path:
    """Bake the template; when we are root, hand the project to BAKER_UID as if that user had baked it.

    (The post-gen hook writes the baker's ids into ``.env``; tests/test_bake.py checks
    that. Our interpreter lives under /root, which another user cannot run, so the
    bake itself runs as root and its result is given to the user.)
    """
    out = tmp_path_factory.mktemp("compose-bake")
    command = [sys.executable, "-m", "cookiecutter", "--no-input", str(TEMPLATE), "-o", str(out)]
    command += [f"{key}={value}" for key, value in context.items()]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"HOME": str(out)}, check=False)
    assert result.returncode == 0, result.stderr
    (path,) = [child for child in out.iterdir() if child.is_dir() and not child.name.startswith(".")]
    if os.geteuid() == 0:
        dotenv = path / ".env"
        text = re.sub(r"^APP_UID=.*$", f"APP_UID={BAKER_UID}", dotenv.read_text(), flags=re.MULTILINE)
        dotenv.write_text(re.sub(r"^APP_GID=.*$", f"APP_GID={BAKER_UID}", text, flags=re.MULTILINE))
        subprocess.run(["chown", "-R", f"{BAKER_UID}:{BAKER_UID}", str(out)], check=True)
    return path


def ensure_images(path: Path, files: list[str]) -> None:
    for image in images.compose_images(path, files):
        try:
            images.ensure(image)
        except images.ImageError as error:
            pytest.fail(f"image {image}: {error}", pytrace=False)


def make_stack(tmp_path_factory, files: list[str], **context) -> Stack:
    path = bake(tmp_path_factory, **context)
    ensure_images(path, files)
    # Free host ports, read by the compose files from the environment as from a user's shell.
    names = ("PORT", "FLOWER_PORT", "RABBITMQ_MANAGEMENT_PORT", "PROMETHEUS_PORT")
    env = {name: str(free_port()) for name in names}
    return Stack(path, files, env)


@pytest.fixture(scope="session", autouse=True)
def prune_dangling_images():
    """vfs keeps a full copy per layer: drop what a rebuild left behind (built images stay)."""
    yield
    if shutil.which("docker") and docker_problem() is None:
        subprocess.run(["docker", "image", "prune", "--force"], capture_output=True, check=False)
