"""Bad answers fail the bake with a message that says what to fix, and write nothing;
a good bake says what to do next.

tests/test_answers.py checks every rule and hostile values per answer; these are the
common mistakes, baked for real.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TEMPLATE

INVALID = [
    ({"project_slug": "Acme-Shop"}, "project_slug 'Acme-Shop' is not a Python package name"),
    ({"project_slug": "2shop"}, "is not a Python package name"),
    ({"project_slug": "class"}, "project_slug 'class' is a Python keyword"),
    ({"project_slug": "celery"}, "project_slug 'celery' would shadow the module of that name that a dependency"),
    ({"project_slug": "json"}, "project_slug 'json' would shadow the Python standard library module"),
    ({"project_slug": "payments"}, "is the name of one of the project's own directories"),
    ({"timezone": "Mars/Olympus"}, "timezone 'Mars/Olympus' is not a time zone name"),
    ({"domain_name": "https://example.com/"}, "is not a lowercase domain name"),
    ({"author_email": "nobody"}, "author_email 'nobody' is not an email address"),
    ({"project_name": "  "}, "project_name '  ' starts or ends with spaces"),
    ({"project_name": ""}, "project_name '' is empty"),
]


@pytest.mark.parametrize(("answers", "message"), INVALID, ids=[str(a) for a, _ in INVALID])
def test_invalid_answer_is_rejected_with_a_hint(cookies, capfd, answers, message):
    context = {"project_slug": "acme_shop"} | answers if "project_name" in answers else answers
    result = cookies.bake(extra_context=context)

    assert result.exit_code != 0
    assert result.project_path is None or not result.project_path.exists()
    assert message in capfd.readouterr().err


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("ci", "travis"),
        ("storage", "ftp"),
        ("python_version", "3.9"),
        ("broker", "kafka"),
        ("sentry", "maybe"),
        ("opentelemetry", "maybe"),
    ],
)
def test_unknown_option_value_is_rejected(cookies, capfd, option, value):
    result = cookies.bake(extra_context={option: value})

    assert result.exit_code != 0
    output = capfd.readouterr()
    assert value in output.err + output.out + str(result.exception)


def first_screen(readme: Path) -> str:
    """A README up to its second section: what a reader sees before scrolling."""
    text = readme.read_text()
    second = [match.start() for match in re.finditer(r"^## ", text, re.MULTILINE)][1]
    return " ".join(text[:second].split())


def test_the_bake_prints_the_next_steps_both_readmes_open_with(tmp_path):
    """After the bake: both ways to run it, the URL, the demo login, how to get a staff
    account; and the same at the top of the template's README and the project's."""
    command = [sys.executable, "-m", "cookiecutter", "--no-input", str(TEMPLATE), "broker=rabbitmq"]
    # As from a shell in tmp_path (a shell sets PWD; the hook names the project from it).
    env = os.environ | {"PWD": str(tmp_path)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    printed = " ".join(result.stdout.split())
    steps = [
        "cd acme_shop && docker compose up --build",
        "cd acme_shop && make dev",
        "a local Redis and RabbitMQ",
        "http://localhost:8000",
        "demo / demo",
        "docker compose exec django python manage.py createsuperuser",
        "make superuser",
    ]
    assert [step for step in steps if step not in printed] == []
    project = tmp_path / "acme_shop"
    assert re.search(r"^superuser: ", (project / "Makefile").read_text(), re.MULTILINE)
    for readme in (TEMPLATE / "README.md", project / "README.md"):
        top = first_screen(readme).replace("`", "")
        missing = [step for step in ("http://localhost:8000", "demo / demo", *steps[-2:]) if step not in top]
        assert missing == [], f"{readme}: not on its first screen: {missing}"
