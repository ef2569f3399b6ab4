"""Bad answers fail the bake with a message that says what to fix, and write nothing.

tests/test_answers.py checks every rule and hostile values per answer; these are the
common mistakes, baked for real.
"""

import pytest

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
