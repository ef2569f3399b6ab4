"""``make dev`` in a fresh bake, from a fresh shell: the README's way in, walked for real.

No virtualenv is activated and VIRTUAL_ENV is unset, as in a new terminal: make
creates ``.venv`` (pip installs the requirements from PyPI, a minute or two),
migrates, and honcho starts every Procfile process. The project's Redis is one of
this test's own, set in ``.env`` as the README says. Once web answers, the three
pools answer ``celery inspect ping`` and beat, Flower and the outbox relay run, the
test presses Ctrl-C (SIGINT to the foreground process group, as a terminal does) and
expects every process to stop and none to be left behind.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import CHOICES, DEMO_LOGIN, free_port, missing, sign_in
from .conftest import redis_server as own_redis_server

# The oldest Python a bake may run on (tests/test_python_floor.py keeps it in step).
FLOOR = min(tuple(map(int, version.split("."))) for version in CHOICES["python_version"])

PROCESSES = ("web", "worker-high", "worker-default", "worker-export", "beat", "flower", "outbox-relay")
# The project's configuration comes from .env; nothing of this test run's may leak in.
NOT_FROM_THE_SHELL = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "REDIS_URL", "DATABASE_URL")
NOT_FROM_THE_SHELL_PREFIXES = ("DJANGO_", "CELERY_", "FLOWER_", "WORKER_")
STARTUP_TIMEOUT = 600  # includes creating .venv from PyPI


def fresh_shell_environment() -> dict[str, str]:
    """This environment as a new terminal would have it: no virtualenv on PATH, no project settings."""
    path = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not (Path(entry).parent / "pyvenv.cfg").exists()
    ]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in NOT_FROM_THE_SHELL and not key.startswith(NOT_FROM_THE_SHELL_PREFIXES)
    }
    env["PATH"] = os.pathsep.join(path)
    return env


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a local http URL)
            return response.status
    except OSError:
        return 0


def processes_in(directory: Path) -> list[str]:
    """Processes whose working directory is ``directory``: what a stopped stack must not leave."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == directory:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name}: {command}")
        except OSError:
            continue
    return found


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of this test's own, on a free port."""
    with own_redis_server(tmp_path) as url:
        yield url


@pytest.mark.slow
def test_make_dev_runs_every_process_from_a_fresh_bake_and_stops_on_ctrl_c(cookies, redis_server, tmp_path):
    env = fresh_shell_environment()
    for tool in ("make", "python3"):
        if not shutil.which(tool, path=env["PATH"]):
            missing(f"{tool} is not on PATH")
    version = subprocess.run(
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if tuple(map(int, version.split("."))) < FLOOR:
        missing(f"python3 on PATH is {version}; the baked project needs {'.'.join(map(str, FLOOR))}+")

    result = cookies.bake(extra_context={"project_name": "Make Dev Door"})
    assert result.exit_code == 0, result.exception
    project = Path(result.project_path).resolve()
    # What the README tells a user to edit: .env. A port each, in case 8000 or 5555 is taken.
    web_port, flower_port = free_port(), free_port()
    dotenv = project / ".env"
    text = re.sub(r"(?m)^REDIS_URL=.*$", f"REDIS_URL={redis_server}", dotenv.read_text())
    dotenv.write_text(f"{text}FLOWER_PORT={flower_port}\n")

    log = tmp_path / "make-dev.log"
    make = subprocess.Popen(
        ["make", "dev", f"PORT={web_port}"],
        cwd=project,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        wait_until_up(project, env, make, log, web_port, flower_port)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C
        try:
            make.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
            pytest.fail(f"make dev did not stop within 90 s of Ctrl-C:\n{tail(log)}")

    output = log.read_text(errors="replace")
    # honcho reports every process it stopped, and exits 130 (interrupted) unless a
    # process died first (then with that one's code, e.g. 127 for a command not found).
    for name in PROCESSES:
        assert f"| {name}.1 stopped (rc=" in output, f"{name} was not stopped:\n{tail(log)}"
    assert "Traceback" not in output, tail(log)
    # Ctrl-C reaches make too: it dies of SIGINT, or reports honcho's 130 and exits 2.
    assert make.returncode == -signal.SIGINT or (make.returncode == 2 and "dev] Error 130" in output), (
        make.returncode,
        tail(log),
    )
    leftovers = []
    for _ in range(20):  # children exit a moment after honcho reports them
        if not (leftovers := processes_in(project)):
            break
        time.sleep(0.5)
    assert not leftovers, leftovers


def tail(log: Path, lines: int = 80) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_until_up(project: Path, env: dict[str, str], make: subprocess.Popen, log: Path, web: int, flower: int):
    """Web answers /healthz, the pools a ping, Flower its healthcheck; every process is running."""
    hostname = socket.gethostname()
    pools = {f"{name}@{hostname}" for name in ("high", "default", "export")}
    ping = [str(project / ".venv/bin/celery"), "--app=config.celery_app", "inspect", "ping", "--timeout=2"]
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if make.poll() is not None:
            pytest.fail(f"make dev exited with {make.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"make dev was not up within {STARTUP_TIMEOUT} s:\n{tail(log)}")
        output = log.read_text(errors="replace")
        if "stopped (rc=" in output:
            pytest.fail(f"a process of make dev stopped on its own:\n{tail(log)}")
        started = all(f"{name}.1 started" in output for name in PROCESSES)
        if started and http_status(f"http://127.0.0.1:{web}/healthz") == 200:
            answer = subprocess.run(ping, cwd=project, env=env, capture_output=True, text=True, timeout=60, check=False)
            if all(f"{pool}: OK" in answer.stdout for pool in pools):
                break
        time.sleep(2)
    assert http_status(f"http://127.0.0.1:{flower}/healthcheck") == 200, tail(log)
    output = log.read_text(errors="replace")
    assert "beat: Starting" in output, tail(log)
    assert "outbox relay started" in output, tail(log)
    # The demo account was seeded before the processes started; its printed login works.
    found = DEMO_LOGIN.search(output)
    assert found, tail(log)
    url, username, password = found.groups()
    assert url == f"http://localhost:{web}/accounts/login/"
    assert sign_in(url.replace("localhost", "127.0.0.1"), username, password)
    assert "stopped (rc=" not in output, f"a process stopped on its own:\n{tail(log)}"
