"""Answers are data: a hostile answer is refused with a message, or bakes a project that works.

Refused means: the bake stops before writing a file, with a message that names the answer,
shows its value and says what to type instead. Accepted means: the baked project parses
(pyproject.toml, YAML), lints (ruff), passes `manage.py check`, sends an email whose From
header carries the project's name intact, and renders that name escaped on its home page.
Never a third outcome, such as a quote in an answer running as code during the bake.

The rules themselves are checked fast, in this process, by running the pre-generation hook
the way cookiecutter does (rendered, then executed); a few bakes prove the whole path.
"""

import ast
import html
import importlib.metadata
import json
import keyword
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from cookiecutter.environment import StrictEnvironment
from packaging.requirements import Requirement

from answer_filters import double_quoted, python_string

from .conftest import TEMPLATE, assert_ok, run

HOOK = TEMPLATE / "hooks" / "pre_gen_project.py"
PROJECT = TEMPLATE / "{{cookiecutter.project_slug}}"
SLUG = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")  # what the hook accepts, before its reserved names
QUESTIONS = {k: v for k, v in json.loads((TEMPLATE / "cookiecutter.json").read_text()).items() if k[0] != "_"}
DEFAULTS = {k: v[0] if isinstance(v, list) else v for k, v in QUESTIONS.items()} | {"project_slug": "acme_shop"}
FREE_TEXT = ("project_name", "description", "author_name")

# Strings that break the formats answers land in, unless escaped.
HOSTILE = [
    "x'); import os; os.system('touch /tmp/pwned'); ('",
    'x"); import os; os.system("touch /tmp/pwned"); ("',
    "'''",
    '"""',
    "back\\slash \\",
    "\\",
    "He said \"hi\" and 'bye'",
    "O'Reilly & Sons: Books, Maps",
    "{{ 7*7 }} {% if x %}{# c #}",
    "line\nbreak\r\n",
    "tab\tnul\x00del\x7f",
    "\u2028\u202eevil",
    "Café Crème — Bob’s Магазин 東京 🚀",
    "$HOME ${HOME} $(id) `id`",
    "<script>alert('x')</script>",
    "# not a comment = [table] - item: &anchor *alias !!python/object",
    "null",
    "true",
    "",
]


def render_hook(answers: dict, given: dict | None = None) -> str:
    """The hook as cookiecutter runs it: rendered with the answers, in cookiecutter's Jinja."""
    environment = StrictEnvironment(context={"cookiecutter": answers}, keep_trailing_newline=True)
    return environment.from_string(HOOK.read_text()).render(cookiecutter=answers, _cookiecutter=given or answers)


def hook_problems(given: dict | None = None, **answers) -> list[str]:
    """The hook's messages for these answers (the rest are the defaults). `given`: what
    cookiecutter keeps as the answers before rendering them (by default, the answers)."""
    namespace = {"__name__": "pre_gen_project"}
    exec(compile(render_hook(DEFAULTS | answers, given), str(HOOK), "exec"), namespace)  # noqa: S102
    return list(namespace["problems"]())


# ---------------------------------------------------------------------------------------
# The filters that write answers into files
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_filters_write_literals_that_read_back_as_the_answer(value):
    assert ast.literal_eval(python_string(value)) == value
    assert tomllib.loads(f"x = {double_quoted(value)}")["x"] == value
    assert yaml.safe_load(f"x: {double_quoted(value)}") == {"x": value}


def test_python_literals_are_as_ruff_format_writes_them(tmp_path):
    source = tmp_path / "literals.py"
    source.write_text("".join(f"VALUE_{n} = {python_string(value)}\n" for n, value in enumerate(HOSTILE)))
    assert_ok(run(["ruff", "format", "--check", "--no-cache", "--isolated", str(source)], tmp_path))


# ---------------------------------------------------------------------------------------
# The hook reads answers as data
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_no_answer_runs_as_code_in_the_hook(tmp_path, value):
    """Every answer set to the value at once: the hook still parses and reports, and the
    touch in the injection strings (pointed at this test's directory) never runs."""
    marker = tmp_path / "pwned"
    value = value.replace("/tmp/pwned", str(marker))
    answers = dict.fromkeys(QUESTIONS, value)
    namespace = {"__name__": "pre_gen_project"}
    exec(compile(render_hook(answers), str(HOOK), "exec"), namespace)  # noqa: S102
    assert namespace["ANSWERS"] | answers == namespace["ANSWERS"]  # read back exactly
    assert list(namespace["problems"]())  # choices such as "ci" refuse any of these
    assert not marker.exists()


def test_every_answer_has_a_rule():
    namespace = {"__name__": "pre_gen_project"}
    exec(compile(render_hook(DEFAULTS), str(HOOK), "exec"), namespace)  # noqa: S102
    assert set(namespace["RULES"]) == set(QUESTIONS)
    for name, values in QUESTIONS.items():
        if isinstance(values, list):
            assert [hook_problems(**{name: value}) for value in values] == [[]] * len(values), name


def test_the_defaults_pass():
    assert hook_problems() == []


# ---------------------------------------------------------------------------------------
# What is refused, and how the message says so
# ---------------------------------------------------------------------------------------

# (answer, value, what the message says is wrong)
REFUSED = [
    *[(field, "a\nb", "not printable") for field in FREE_TEXT],
    *[(field, "tab\there", "not printable") for field in FREE_TEXT],
    *[(field, "\u202eevil", "not printable") for field in FREE_TEXT],
    *[(field, " padded", "spaces") for field in FREE_TEXT],
    *[(field, "{{ 7*7 }}", "template syntax") for field in FREE_TEXT],
    *[(field, "{% raw %}", "template syntax") for field in FREE_TEXT],
    ("project_name", "", "is empty"),
    ("project_name", "x" * 51, "51 characters long"),
    ("project_name", "=?utf-8?q?Admin?=", "encoded word"),
    ("author_name", "", "is empty"),
    ("author_name", "Doe, Jane", "comma"),
    ("project_slug", "Acme-Shop", "not a Python package name"),
    ("project_slug", "2shop", "not a Python package name"),
    ("project_slug", "acme__shop", "not a Python package name"),
    ("project_slug", "acme_shop_", "not a Python package name"),
    ("project_slug", "café", "not a Python package name"),
    ("project_slug", "x'); import os; ('", "not a Python package name"),
    ("project_slug", "a" * 31, "31 characters long"),
    ("project_slug", "class", "keyword"),
    ("project_slug", "json", "standard library"),
    ("project_slug", "config", "project's own"),
    ("project_slug", "celery", "dependency"),
    ("project_slug", "con", "Windows"),
    ("author_email", "nobody", "not an email address"),
    ("author_email", "a@b@example.com", "not an email address"),
    ("author_email", 'a"@example.com', "not an email address"),
    ("author_email", "ada@example.com\nBcc: x@example.com", "not an email address"),
    ("domain_name", "https://example.com/", "not a lowercase domain name"),
    ("domain_name", "Example.com", "not a lowercase domain name"),
    ("domain_name", "bücher.de", "not a lowercase domain name"),
    ("domain_name", "localhost", "not a lowercase domain name"),
    ("domain_name", "example.com\nevil", "not a lowercase domain name"),
    ("domain_name", ("a" * 60 + ".") * 2 + "com", "more than 100"),
    ("timezone", "Mars/Olympus", "not a time zone name"),
    ("timezone", "../../etc/passwd", "not a time zone name"),
    ("timezone", 'UTC"', "not a time zone name"),
    ("python_version", "3.9", "not one of 3.11, 3.12, 3.13"),
    ("broker", "kafka", "not one of redis, rabbitmq"),
    ("sentry", "maybe", "not one of yes, no"),
    ("sentry", "Yes", "not one of yes, no"),
]


@pytest.mark.parametrize(("field", "value", "problem"), REFUSED, ids=[f"{f}={v!r}"[:60] for f, v, _ in REFUSED])
def test_refusal_names_the_answer_its_value_and_what_to_type(field, value, problem):
    messages = hook_problems(**{field: value})
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{field} {value!r} ")
    assert problem in messages[0]
    assert ": type " in messages[0]


@pytest.mark.parametrize("field", FREE_TEXT)
def test_template_syntax_typed_at_a_prompt_is_refused(field):
    """Typed answers are not rendered, and cookiecutter's record of the answers before
    rendering then holds the defaults: the hook checks the final value too."""
    messages = hook_problems(given=DEFAULTS, **{field: "Shop {% if x %}"})
    expected = "'Shop {% if x %}' contains template syntax: type the same text without {{, {% or {#."
    assert messages == [f"{field} {expected}"]


@pytest.mark.parametrize(
    ("field", "value", "suggestion"),
    [
        ("project_slug", "Acme-Shop", "project_slug=acme_shop"),
        ("project_slug", "2shop", "project_slug=my_2shop"),
        ("project_slug", "config", "project_slug=my_config"),
        ("domain_name", "https://Example.com/shop", "domain_name=example.com"),
        ("domain_name", "bücher.de", "domain_name=xn--bcher-kva.de"),
        ("timezone", "Europe/Berln", "timezone=Europe/Berlin"),
    ],
)
def test_refusal_suggests_a_fixed_value(field, value, suggestion):
    assert suggestion in hook_problems(**{field: value})[0]


def project_names() -> set[str]:
    """The baked project's own names: top-level directories and modules, the package's
    directories (apps, templates) and what its .gitignore says it creates (media/, ...)."""
    names = {path.stem for path in PROJECT.iterdir() if path.is_dir() or path.suffix == ".py"}
    names |= {path.name for path in (PROJECT / "{{cookiecutter.project_slug}}").iterdir() if path.is_dir()}
    names |= {line.strip("/") for line in (PROJECT / ".gitignore").read_text().splitlines()}
    return {name for name in names if SLUG.fullmatch(name)}


def dependency_modules() -> set[str]:
    """Top-level modules installed by requirements/*.txt, with their dependencies (this
    virtualenv has them all installed)."""
    seen, todo = set(), []
    for path in (PROJECT / "requirements").glob("*.txt"):
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith(("-", "{%")):
                todo.append(Requirement(line))
    while todo:
        requirement = todo.pop()
        name = importlib.metadata.distribution(requirement.name).metadata["Name"].lower().replace("_", "-")
        extras = {(name, extra) for extra in requirement.extras} | {(name, "")}
        if extras <= seen:
            continue
        seen |= extras
        for line in importlib.metadata.requires(name) or []:
            dependency = Requirement(line)
            wanted = {extra for dist, extra in seen if dist == name}
            if not dependency.marker or any(dependency.marker.evaluate({"extra": extra}) for extra in wanted):
                todo.append(dependency)
    installed = {dist for dist, _ in seen}
    return {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if SLUG.fullmatch(module) and any(dist.lower().replace("_", "-") in installed for dist in dists)
    }


def test_dependency_modules_are_found():
    """The discovery itself works: it finds the obvious ones, extras' dependencies included."""
    assert {"django", "celery", "kombu", "redis", "environ", "psycopg", "yaml", "storages", "boto3"} <= (
        dependency_modules()
    )


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        (project_names, "project's own"),
        (dependency_modules, "dependency installs"),
        (lambda: {name for name in sys.stdlib_module_names if SLUG.fullmatch(name)}, "standard library"),
        (lambda: {name for name in keyword.kwlist if SLUG.fullmatch(name)}, "keyword"),
    ],
    ids=["project", "dependencies", "stdlib", "keywords"],
)
def test_reserved_slugs_are_refused(names, reason):
    """Fails when the project gains a directory or a dependency gains a module that
    hooks/pre_gen_project.py does not refuse yet: add the name it reports there."""
    missed = sorted(name for name in names() if not any(reason in m for m in hook_problems(project_slug=name)))
    assert missed == [], f"add to hooks/pre_gen_project.py: {missed}"


# ---------------------------------------------------------------------------------------
# Whole bakes: refused ones write nothing, accepted ones work
# ---------------------------------------------------------------------------------------


def bake_dirs_are_empty(tmp_path: Path) -> bool:
    return all(not any(bake.iterdir()) for bake in (tmp_path / "cookies").iterdir())


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"project_name": "x'); import os; os.system('touch /tmp/pwned'); ('"}, "more than 50"),
        ({"author_name": 'x", "z": __import__("os").system("touch /tmp/pwned"), "y": "'}, "comma"),
        ({"description": "one\nx'''); import os; os.system('touch /tmp/pwned') #"}, "not printable"),
        ({"project_name": "123 Go"}, "project_slug '123_go' is not a Python package name"),
        ({"project_name": "Config"}, "project_slug 'config' is the name of one of the project's own"),
    ],
    ids=["name-injection", "author-injection", "description-injection", "digit-slug", "reserved-slug"],
)
def test_refused_bake_says_why_and_writes_nothing(cookies, capfd, tmp_path, context, message):
    marker = tmp_path / "pwned"
    context = {key: value.replace("/tmp/pwned", str(marker)) for key, value in context.items()}
    result = cookies.bake(extra_context=context)
    assert result.exit_code != 0
    assert message in capfd.readouterr().err
    assert bake_dirs_are_empty(tmp_path)
    assert not marker.exists()


def test_derived_slug_that_cannot_work_says_to_pass_project_slug(cookies, capfd):
    assert cookies.bake(extra_context={"project_name": "2 Fast"}).exit_code != 0
    err = capfd.readouterr().err
    assert "project_slug=my_2_fast" in err
    assert "derived from project_name '2 Fast'" in err


def test_template_syntax_given_with_no_input_is_refused(cookies, capfd, tmp_path):
    """With --no-input, cookiecutter renders an answer as a template before the hook runs:
    the hook sees both and refuses, rather than bake a project named "49"."""
    result = cookies.bake(extra_context={"project_name": "Shop {{ 7*7 }}", "project_slug": "shop"})
    assert result.exit_code != 0
    assert "project_name 'Shop {{ 7*7 }}' contains template syntax (cookiecutter rendered it to 'Shop 49')" in (
        capfd.readouterr().err
    )
    assert bake_dirs_are_empty(tmp_path)


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Acme Shop", "acme_shop"),
        ("Café Crème", "cafe_creme"),
        ("東京ショップ", "dong_jing_siyotuhu"),
        ("a" * 40, "a" * 30),
        ("!!!", "my_project"),  # nothing to derive a slug from
    ],
)
def test_the_default_slug_comes_from_any_unicode_name(cookies, name, slug):
    result = cookies.bake(extra_context={"project_name": name})
    assert result.exit_code == 0, result.exception
    assert result.context["project_slug"] == slug


# Run in the baked project. The From header is read the way RFC 2047 says (whitespace
# between two encoded words is not part of the text; email.headerregistry keeps it).
CHECK_PROJECT = """
import email, json
from email.header import decode_header, make_header
from email.utils import getaddresses
import django
django.setup()
from django.core.mail import EmailMessage
from django.core.management import call_command
from django.test import Client
from django.test.utils import setup_test_environment
call_command("check", fail_level="WARNING")
sent = EmailMessage("Hello", "Body", to=["someone@example.com"]).message().as_bytes()
header = email.message_from_bytes(sent).get_all("From")
call_command("migrate", run_syncdb=True, verbosity=0)
setup_test_environment()
page = Client().get("/", follow=True)
from_ = [(str(make_header(decode_header(name))), address) for name, address in getaddresses(header)]
print(json.dumps({"from": from_, "status": page.status_code, "html": page.content.decode()}))
"""


def assert_project_works(path: Path, context: dict) -> None:
    project = tomllib.loads((path / "pyproject.toml").read_text())["project"]
    assert project["description"] == context["description"]
    assert project["authors"] == [{"name": context["author_name"], "email": context["author_email"]}]
    for compose_file in ("docker-compose.yml", "docker-compose.production.yml", ".github/workflows/ci.yml"):
        if (path / compose_file).exists():
            yaml.safe_load((path / compose_file).read_text())
    assert yaml.safe_load((path / "docker-compose.yml").read_text())["name"] == context["project_slug"]

    assert_ok(run(["ruff", "check", "--no-cache", "."], path))
    assert_ok(run(["ruff", "format", "--check", "--no-cache", "."], path))

    env = {"DJANGO_SETTINGS_MODULE": "config.settings.test", "DATABASE_URL": "sqlite://:memory:"}
    result = run([sys.executable, "-c", CHECK_PROJECT], path, env=env)
    assert_ok(result)
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["from"] == [[context["project_name"], f"noreply@{context['domain_name']}"]]
    assert seen["status"] == 200
    assert html.escape(context["project_name"]) in seen["html"]
    if "<" in context["project_name"]:
        assert context["project_name"] not in seen["html"]  # never as markup


ACCEPTED = {
    "quotes": {
        "project_name": 'The "Best" Shop\'s',
        "description": 'It\'s "quoted" \'\'\' and """ too',
        "author_name": 'Ada "The Countess" O\'Brien',
    },
    "backslashes": {"project_name": "AC\\DC \\", "description": "C:\\new\\table \\", "author_name": "\\o/"},
    "punctuation": {
        "project_name": "Tom & Jerry: Books, Maps; More",
        "description": "a: b, c; d # e = f [g] {h} - i",
        "author_name": "Jane Doe: Esq. (Ltd.) <j>",
    },
    "unicode": {
        "project_name": "Ünïcödé Café — Bob’s Магазин 🚀",
        "description": "東京 — ‘curly’ “quotes” ℹ",
        "author_name": "Zoë Ångström-Łukasiewicz",
    },
    "wide-and-long": {"project_name": "東" * 50, "project_slug": "wide"},
    "html": {"project_name": "<script>alert('x')</script>", "description": "<b>bold</b> &amp;"},
    "dollars": {"project_name": "$HOME ${HOME} $(id) `id`", "author_name": "$USER"},
    "injection": {
        "project_name": "x'); import os #",
        "description": "x'); import os; os.system('touch /tmp/pwned'); ('",
        "author_name": 'x"); __import__("os").system("touch /tmp/pwned"); ("',
    },
    "yaml-words": {"project_name": "null", "project_slug": "true", "description": "- yes: no"},
    "edges": {
        "project_name": "x",
        "project_slug": "x",
        "description": "",
        "author_email": "o'brien+tag@Example.CO.uk",
        "domain_name": "a" * 60 + "." + "b" * 35 + ".com",
        "timezone": "America/Argentina/Buenos_Aires",
    },
    "long-slug": {"project_slug": "abcdefghij_abcdefghij_abcdefgh", "timezone": "Etc/GMT+5", "ci": "github"},
}


@pytest.mark.parametrize("answers", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_hostile_but_valid_answers_bake_a_working_project(cookies, tmp_path, answers):
    marker = tmp_path / "pwned"
    answers = {key: value.replace("/tmp/pwned", str(marker)) for key, value in answers.items()}
    assert hook_problems(**answers) == []
    result = cookies.bake(extra_context=answers)
    assert result.exit_code == 0, result.exception
    assert not marker.exists()
    assert_project_works(result.project_path, result.context)
