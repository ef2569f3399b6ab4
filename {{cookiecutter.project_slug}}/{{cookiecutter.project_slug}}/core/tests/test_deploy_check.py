"""`manage.py check --deploy` with production settings, run the way an operator would.

Without the production environment it must say which files to load (no traceback);
following that advice word for word must give a clean check.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def check_deploy(shell_prefix: str = "") -> subprocess.CompletedProcess:
    # A clean environment: only what a fresh shell has, plus the production settings module.
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/"),
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
    }
    command = f"{shell_prefix} python manage.py check --deploy"
    return subprocess.run(["/bin/sh", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_missing_environment_names_the_env_files_to_load():
    result = check_deploy()

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "DJANGO_SECRET_KEY is not set" in result.stderr
    assert ".envs/.production/.django" in result.stderr


def test_the_advice_works_word_for_word():
    advice = re.search(r"load them first:\s+(set -a;.*set \+a)", check_deploy().stderr)
    assert advice, "the error message gives no command to load the env files"

    result = check_deploy(f"{advice.group(1)};")

    assert "Traceback" not in result.stderr
    # Only what a fresh bake must still set up: payments (no Stripe key yet, and the
    # sandbox is not allowed in production). An error: a deploy pipeline stops there.
    assert re.findall(r"\(([\w.]+)\)", result.stderr) == ["payments.E001"], result.stderr
    assert result.returncode == 1
