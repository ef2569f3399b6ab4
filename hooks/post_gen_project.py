"""Delete the files of options that are off, fill in generated secrets, record the template, say what next."""

import json
import os
import re
import secrets
import shlex
import shutil
import string
import subprocess
import sys
import types
from pathlib import Path

from cookiecutter.config import BUILTIN_ABBREVIATIONS
from cookiecutter.repository import expand_abbreviations

# The answers, as data: one JSON document in a raw string literal that no value can end
# early (pre_gen_project.py says why). Never paste an answer into this file's code.
CONTEXT = json.loads(r"""{{ cookiecutter | tojson }}""")

# Paths removed when the option has the given value.
REMOVE_WHEN = {
    ("ci", "none"): [".github"],
    # The outage is staged with a redis-server of the test's own, as the broker: a
    # Redis bake's test. (RabbitMQ bakes share the outbox code; the drill is Redis too.)
    ("broker", "rabbitmq"): ["tests/test_outbox_integration.py"],
    ("broker", "redis"): [
        "config/amqp_frames.py",
        ".envs/.local/.rabbitmq",
        ".envs/.production/.rabbitmq",
        "tests/rabbitmq.py",
        "tests/test_rabbitmq_integration.py",
    ],
    ("kubernetes", "no"): ["k8s", "config/kubernetes.py", "tests/test_kubernetes.py", "tests/keda"],
    ("opentelemetry", "no"): ["config/telemetry.py", "tests/test_telemetry_integration.py"],
    ("sentry", "no"): [
        "config/sentry.py",
        "tests/sentry_ingest.py",
        "tests/sentry_tasks.py",
        "tests/test_sentry_integration.py",
        "tests/test_sentry_scrubbing.py",
    ],
}

# The Kubernetes overlay's Secret (git-ignored); its example is written beside it.
KUBERNETES_SECRETS = "k8s/overlays/production/secrets.env"

# Placeholders replaced by a fresh secret, in every file that contains them.
SECRET_FILES = [
    ".env",
    ".envs/.local/.django",
    ".envs/.local/.metrics",
    ".envs/.local/.postgres",
    ".envs/.local/.rabbitmq",
    ".envs/.production/.django",
    ".envs/.production/.metrics",
    ".envs/.production/.postgres",
    ".envs/.production/.rabbitmq",
    KUBERNETES_SECRETS,
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


# The image's own unprivileged user (Dockerfile: `adduser --uid 10001`). Containers never
# run as root: a project baked by root gets this user instead of root's 0.
IMAGE_UID = "10001"
BAKED_BY_ROOT = SECRETS["!!!HOST_UID!!!"] == "0"
if BAKED_BY_ROOT:
    SECRETS["!!!HOST_UID!!!"] = SECRETS["!!!HOST_GID!!!"] = IMAGE_UID


# Files cruft leaves alone on update: each bake generates its own secrets into them.
CRUFT_SKIP = [".env", ".envs"]


def record_template() -> None:
    """Write .cruft.json: the template, its commit and the answers this project was baked from.

    `cruft update` reads it to bring the template's later changes in as a patch (and
    `cruft check` in CI says when the project has fallen behind). `cruft create` writes
    the same file; writing it here links a plain `cookiecutter` bake too.
    """
    if "_commit" in CONTEXT or "_repo_dir" not in CONTEXT:
        return  # cruft itself is rendering (create, update, diff): it keeps .cruft.json
    # Relative paths are relative to where cookiecutter was started; the hook runs elsewhere.
    started_in = Path(os.environ.get("PWD", "."))
    repo_dir = (started_in / CONTEXT["_repo_dir"]).resolve()
    git = subprocess.run(
        ["git", "-C", str(repo_dir), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True
    )
    lines = git.stdout.split()
    if git.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != repo_dir:
        print("Note: the template is not a git checkout, so no .cruft.json was written (cruft update needs one).")
        return
    commit = lines[1]
    local = started_in / CONTEXT["_template"]
    template = (
        str(local.resolve()) if local.is_dir() else expand_abbreviations(CONTEXT["_template"], BUILTIN_ABBREVIATIONS)
    )
    answers = {key: value for key, value in CONTEXT.items() if not key.startswith("_")}
    cruft = {
        "template": template,
        "commit": commit,
        "checkout": None,
        "context": {"cookiecutter": answers | {"_template": template, "_commit": commit}},
        "directory": None,
        "skip": CRUFT_SKIP,
    }
    Path(".cruft.json").write_text(json.dumps(cruft, indent=2, ensure_ascii=False) + "\n")


def write_kubernetes_base() -> None:
    """Render k8s/base/ from the topology: what `python -m config.kubernetes` writes later.

    The project's requirements are not installed where cookiecutter runs, and importing
    the `config` package would start Celery (config/__init__.py). So `config` is given here
    as a bare namespace, and only config/topology.py and config/kubernetes.py are loaded:
    they need nothing but the standard library and PyYAML, which cookiecutter itself needs.
    """
    package = types.ModuleType("config")
    package.__path__ = [str(Path("config").resolve())]
    saved = sys.modules.get("config")
    sys.modules["config"] = package
    try:
        from config import kubernetes

        kubernetes.write()
    finally:
        for name in ("config", "config.topology", "config.kubernetes"):
            sys.modules.pop(name, None)
        if saved is not None:
            sys.modules["config"] = saved


def next_steps() -> str:
    """What to type after the bake: the same steps as the top of the project's README."""
    project = Path.cwd()  # the hook runs in the new project
    try:
        project = project.relative_to(Path(os.environ.get("PWD", ".")).resolve())
    except ValueError:
        pass  # baked somewhere else (-o): the full path
    services = "Redis" + (" and RabbitMQ" if CONTEXT["broker"] == "rabbitmq" else "")
    cd = f"cd {shlex.quote(str(project))}"  # a path with spaces still pastes as one word
    return f"""
Baked {CONTEXT["project_name"]!r} into {project}. Next:

  With Docker:   {cd} && docker compose up --build
  Natively:      {cd} && make dev      (Python 3.11+ and a local {services})

Then open http://localhost:8000 and sign in as demo / demo (the first run prints it).
The operations page and /admin/ need a staff account; while the site runs:
  docker compose exec django python manage.py createsuperuser      (natively: make superuser)
Tests: make test. More in {project / "README.md"}.
"""


def main() -> None:
    for (option, value), paths in REMOVE_WHEN.items():
        if CONTEXT[option] == value:
            for path in map(Path, paths):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    if Path(KUBERNETES_SECRETS).exists():
        # The committed example: the same lines, with change-me for every generated secret.
        text = Path(KUBERNETES_SECRETS).read_text()
        Path(KUBERNETES_SECRETS + ".example").write_text(re.sub(r"!!!\w+!!!", "change-me", text))
        write_kubernetes_base()
    for path in filter(Path.exists, map(Path, SECRET_FILES)):
        text = path.read_text()
        for placeholder, value in SECRETS.items():
            text = text.replace(placeholder, value)
        path.write_text(text)
        path.chmod(0o600)  # secrets: readable by whoever baked the project, nobody else
    if BAKED_BY_ROOT:
        # That user cannot write into root's checkout: give it the one directory the
        # development containers write into, ./media (export files; git-ignored), and
        # the one secret file they read, .env (config/settings/base.py).
        Path("media").mkdir(exist_ok=True)
        for path in ("media", ".env"):
            os.chown(path, int(IMAGE_UID), int(IMAGE_UID))
    record_template()
    print(next_steps())


if __name__ == "__main__":
    main()
