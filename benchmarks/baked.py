"""What every benchmark needs: a freshly baked project with its own database.

    with baked_project("blueprint_bench", redis_db=9) as project:
        project.sh("python", "manage.py", "seed_demo_data", "--transactions", "1000")

Needs PostgreSQL (trust auth for the postgres role) and Redis on 127.0.0.1;
with ``broker="rabbitmq"`` also a local RabbitMQ (guest/guest, ``rabbitmqctl``),
in a vhost of its own that is deleted afterwards.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent
POSTGRES = ["-h", "127.0.0.1", "-U", "postgres"]


@dataclass
class Baked:
    path: Path
    env: dict[str, str]

    @property
    def slug(self) -> str:
        return self.path.name

    def sh(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a command in the project; raise with its output if it fails."""
        result = subprocess.run(
            args, cwd=self.path, env=self.env, text=True, capture_output=True, timeout=timeout, check=False
        )
        if result.returncode:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def popen(self, *args: str) -> subprocess.Popen:
        """Start a long-running process (a worker) in its own process group."""
        return subprocess.Popen(args, cwd=self.path, env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def bake(prefix: str, **answers: str) -> Path:
    """Bake the template, its defaults but for ``answers``, into a new temporary directory."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    return Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(workdir), extra_context=answers))


@contextmanager
def baked_project(database: str, redis_db: int, broker: str = "redis", **extra_env: str):
    path = bake(database, broker=broker)
    workdir = path.parent
    if broker == "rabbitmq":
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", database], check=False, capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", database], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", database, "guest", ".*", ".*", ".*"], check=True)
        extra_env = {"CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{database}"} | extra_env
    env = (
        os.environ
        | {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
            "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DJANGO_MEDIA_ROOT": str(workdir / "media"),
            "CELERY_WORKER_AUTORELOAD": "0",
            "CELERY_LOG_LEVEL": "WARNING",
            "DJANGO_LOG_LEVEL": "WARNING",
        }
        | extra_env
    )
    subprocess.run(["dropdb", *POSTGRES, "--if-exists", database], check=True, capture_output=True)
    subprocess.run(["createdb", *POSTGRES, database], check=True)
    try:
        project = Baked(path, env)
        project.sh("python", "manage.py", "migrate", "--no-input")
        project.sh("python", "-m", "celery", "-A", "config.celery_app", "purge", "-f")
        yield project
    finally:
        subprocess.run(["dropdb", *POSTGRES, "--if-exists", database], check=False, capture_output=True)
        subprocess.run(["redis-cli", "-n", str(redis_db), "flushdb"], check=False, capture_output=True)
        if broker == "rabbitmq":
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", database], check=False, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
