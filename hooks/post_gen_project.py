"""Delete the files of options that are off and fill in generated secrets."""

import os
import secrets
import shutil
import string
from pathlib import Path

# Paths removed when the option has the given value.
REMOVE_WHEN = {
    ("ci", "none"): [".github"],
    # The outage is staged with a redis-server of the test's own, as the broker: a
    # Redis bake's test. (RabbitMQ bakes share the outbox code; the drill is Redis too.)
    ("broker", "rabbitmq"): ["tests/test_outbox_integration.py"],
    ("broker", "redis"): [
        ".envs/.local/.rabbitmq",
        ".envs/.production/.rabbitmq",
        "tests/rabbitmq.py",
        "tests/test_rabbitmq_integration.py",
    ],
}
OPTIONS = {"ci": "{{ cookiecutter.ci }}", "broker": "{{ cookiecutter.broker }}"}

# Placeholders replaced by a fresh secret, in every file that contains them.
SECRET_FILES = [
    ".env",
    ".envs/.local/.django",
    ".envs/.local/.postgres",
    ".envs/.local/.rabbitmq",
    ".envs/.production/.django",
    ".envs/.production/.postgres",
    ".envs/.production/.rabbitmq",
]
ALPHABET = string.ascii_letters + string.digits


def token(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


SECRETS = {
    "!!!DJANGO_SECRET_KEY!!!": token(64),
    "!!!FLOWER_PASSWORD!!!": token(32),
    "!!!PRODUCTION_FLOWER_PASSWORD!!!": token(32),
    "!!!METRICS_PASSWORD!!!": token(32),
    "!!!PRODUCTION_METRICS_PASSWORD!!!": token(32),
    "!!!LOCAL_POSTGRES_PASSWORD!!!": token(32),
    "!!!PRODUCTION_POSTGRES_PASSWORD!!!": token(32),
    "!!!LOCAL_RABBITMQ_PASSWORD!!!": token(32),
    "!!!PRODUCTION_RABBITMQ_PASSWORD!!!": token(32),
    # Not secrets: who baked the project, so the development containers run as that user
    # (docker-compose.yml). Windows has no uids; Docker Desktop maps file ownership itself.
    "!!!HOST_UID!!!": str(os.getuid() if hasattr(os, "getuid") else 1000),
    "!!!HOST_GID!!!": str(os.getgid() if hasattr(os, "getgid") else 1000),
}


def main() -> None:
    for (option, value), paths in REMOVE_WHEN.items():
        if OPTIONS[option] == value:
            for path in map(Path, paths):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in filter(Path.exists, map(Path, SECRET_FILES)):
        text = path.read_text()
        for placeholder, value in SECRETS.items():
            text = text.replace(placeholder, value)
        path.write_text(text)


if __name__ == "__main__":
    main()
