"""Refuse answers that would bake a broken project, before any file is written.

Every answer is checked against one table, RULES; a refusal names the answer, shows its
value and says what to type instead. Whatever is accepted bakes a project whose checks,
lint, tests, emails and TOML work: the files write each answer through a filter that
escapes it for where it lands (answer_filters.py).

Cookiecutter renders this file with Jinja before running it. The answers come in as one
JSON document inside a raw string literal: JSON escapes every quote and control character
in a value, so no value can end the literal early, and an answer is data here, never code.
"""

import difflib
import json
import keyword
import re
import sys
import unicodedata
import zoneinfo

ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")
# The answers as they were given, before cookiecutter rendered them: with --no-input it
# renders every answer (command line key=value, extra_context) as a Jinja template first.
GIVEN = json.loads(r"""{{ _cookiecutter | default({}) | tojson }}""")
# Jinja leaves the rest of this file as it is, braces included: {% raw %}

SLUG = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN = re.compile(rf"({LABEL}\.)+([a-z]{{2,63}}|xn--[a-z0-9-]{{1,59}})")
ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
EMAIL = re.compile(rf"{ATOM}(\.{ATOM})*@(?i:{DOMAIN.pattern})")
TIME_ZONE_NAME = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
TEMPLATE_SYNTAX = re.compile(r"{{|{%|{#")

# The baked project's own top-level names (directories, modules, apps, and the media/ and
# staticfiles/ it creates): a package named like one would collide with it.
PROJECT_NAMES = {
    "config", "tests", "requirements", "conftest", "manage", "docs", "media", "static", "staticfiles",
    "templates", "core", "users", "payments", "exports", "outbox", "imports", "statements", "compose", "scripts",
    "k8s",
}  # fmt: skip
# Top-level modules that requirements/*.txt install, dependencies included: the project's
# package would shadow one. tests/test_answers.py fails when a new dependency adds a name.
DEPENDENCY_MODULES = {
    "amqp", "annotated_doc", "annotated_types", "anyio", "arrow", "asgiref", "attr", "attrs", "billiard",
    "binaryornot", "boto3", "botocore", "celery", "certifi", "cfgv", "charset_normalizer", "click",
    "click_didyoumean", "click_plugins", "click_repl", "cookiecutter", "cron_descriptor", "cronlog", "crontab", "csp",
    "crontabs", "cruft", "dateutil", "distlib", "django", "django_celery_beat", "environ", "filelock", "flower",
    "git", "gitdb", "google", "greenlet", "gunicorn", "hiredis", "honcho", "humanize", "identify", "idna",
    "importlib_resources", "iniconfig", "jinja2", "jmespath", "jsonschema", "jsonschema_specifications", "kombu",
    "kubernetes_validate", "markdown_it", "markupsafe", "mdurl", "nodeenv", "opentelemetry", "packaging",
    "platformdirs", "playwright", "pluggy", "pre_commit", "prometheus_client", "prompt_toolkit", "psycopg",
    "psycopg_binary", "py", "pydantic", "pydantic_core", "pygments", "pytest", "pytest_django",
    "python_discovery", "pytz", "redis", "referencing", "requests", "rich", "rpds", "ruff", "s3transfer",
    "sentry_sdk", "shellingham", "six", "slugify", "smmap", "sqlparse", "storages", "stripe", "text_unidecode",
    "timezone_field", "tornado", "typer", "typing_extensions", "typing_inspection", "tzdata", "tzlocal",
    "urllib3", "vine", "virtualenv", "watchfiles", "wcwidth", "whitenoise", "wrapt", "yaml",
}  # fmt: skip
# Python imports these at start-up when they exist; Windows cannot create these directories.
STARTUP_MODULES = {"sitecustomize", "usercustomize"}
WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{n}" for n in range(10)), *(f"lpt{n}" for n in range(10))}

# Every check returns what is wrong with a value, or None.


def required(value):
    return None if value else "is empty"


def one_line(value):
    if not value.isprintable():
        return "contains a character that is not printable (a line break, tab, control or format character)"


def trimmed(value):
    if value != value.strip():
        return "starts or ends with spaces"


def at_most(limit, why=""):
    def check(value):
        if len(value) > limit:
            return f"is {len(value)} characters long, more than {limit}{why}"

    return check


def no_encoded_word(value):
    if "=?" in value:
        return "contains '=?', which mail programs read as an encoded word in the From header it lands in"


def no_comma(value):
    if "," in value:
        return "contains a comma (pyproject.toml's authors field cannot hold one: it separates authors)"


def matches(pattern, what):
    def check(value):
        if not pattern.fullmatch(value):
            return f"is not {what}"

    return check


def unreserved(slug):
    if keyword.iskeyword(slug):
        return "is a Python keyword"
    if slug in sys.stdlib_module_names or slug in STARTUP_MODULES:
        return "would shadow the Python standard library module of that name"
    if slug in PROJECT_NAMES:
        return "is the name of one of the project's own directories, modules or apps"
    if slug in DEPENDENCY_MODULES:
        return "would shadow the module of that name that a dependency installs"
    if slug in WINDOWS_DEVICES:
        return "is a device name Windows cannot use for a directory"


def time_zone(value):
    try:
        zoneinfo.ZoneInfo(value)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        return "is not a time zone name"


def one_of(*choices):
    def check(value):
        if value not in choices:
            return f"is not one of {', '.join(choices)}"

    return check


# What to type instead, where a value can be turned into a good one.


def slug_like(value):
    ascii_text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode().lower()
    slug = "_".join(re.findall(r"[a-z0-9]+", ascii_text))[:30].strip("_")
    for candidate in (slug, f"my_{slug}"[:30].strip("_")):
        if SLUG.fullmatch(candidate) and not unreserved(candidate):
            return candidate
    return "my_project"


def domain_like(value):
    host = re.sub(r"^[a-z]+://", "", value.strip().lower()).split("/")[0].split(":")[0]
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    return host if DOMAIN.fullmatch(host) and len(host) <= 100 else "example.com"


def time_zone_like(value):
    names = zoneinfo.available_timezones() | {"UTC"}
    return (difflib.get_close_matches(value, names, n=1, cutoff=0.6) or ["Europe/Berlin"])[0]


# The table: every answer, its checks in order (the first that fails is reported) and what
# to type instead (text, or a function of the refused value). Free text lands in Python,
# TOML, Markdown, HTML and an email header: control characters and template syntax (see
# template_syntax) are refused, everything else is escaped where it lands. The lengths keep
# the lines that hold an answer within ruff's 119 columns (PROJECT_NAME and DOMAIN_NAME in
# config/settings/base.py, the slug in imports), even when every character of a name is a
# wide or an escaped one (two columns).
RULES = {
    "project_name": (
        (required, one_line, trimmed, at_most(50), no_encoded_word),
        "a name of up to 50 characters on one line, without spaces at its ends, such as 'Acme Shop'",
    ),
    "project_slug": (
        (
            matches(SLUG, "a Python package name (lowercase letters, digits and single underscores, from a letter)"),
            at_most(30, " (it names the package, the database and the compose project)"),
            unreserved,
        ),
        lambda value: (
            f"project_slug={slug_like(value)}, or another free name "
            f"(by default the slug is derived from project_name {ANSWERS.get('project_name')!r})"
        ),
    ),
    "description": ((one_line, trimmed), "one line of text without spaces at its ends"),
    "author_name": (
        (required, one_line, trimmed, no_comma),
        "your name without commas, such as 'Ada Lovelace'",
    ),
    "author_email": (
        (matches(EMAIL, "an email address"), at_most(254)),
        "an address such as 'ada@example.com'",
    ),
    "domain_name": (
        (matches(DOMAIN, "a lowercase domain name without scheme, port or path"), at_most(100)),
        lambda value: f"domain_name={domain_like(value)}",
    ),
    "timezone": (
        (matches(TIME_ZONE_NAME, "a time zone name"), time_zone),
        lambda value: f"an IANA time zone name such as timezone={time_zone_like(value)}",
    ),
    "python_version": ((one_of("3.11", "3.12", "3.13"),), "one of those"),
    "ci": ((one_of("github", "none"),), "one of those"),
    "storage": ((one_of("local", "s3"),), "one of those"),
    "broker": ((one_of("redis", "rabbitmq"),), "one of those"),
    "opentelemetry": ((one_of("no", "yes"),), "one of those"),
    "sentry": ((one_of("yes", "no"),), "one of those"),
    "kubernetes": ((one_of("no", "yes"),), "one of those"),
}


def template_syntax(field):
    """Cookiecutter renders answers given with --no-input as templates before this hook
    runs: '{{ 7*7 }}' arrives as '49', '{% if %}' blocks vanish. Such answers are refused
    rather than baked as something the user did not type. (project_slug's default is a
    template, and a slug can hold no braces anyway.)"""
    given, value = GIVEN.get(field), ANSWERS[field]
    if field != "project_slug" and isinstance(given, str) and TEMPLATE_SYNTAX.search(given):
        rendered = f" (cookiecutter rendered it to {value!r})" if value != given else ""
        return given, f"contains template syntax{rendered}"
    if TEMPLATE_SYNTAX.search(value):
        return value, "contains template syntax"
    return value, None


def problems():
    for field, (checks, instead) in RULES.items():
        value, problem = template_syntax(field)
        hint = "the same text without {{, {% or {#"
        if problem is None:
            problem = next(filter(None, (check(value) for check in checks)), None)
            hint = instead(value) if callable(instead) else instead
        if problem:
            yield f"{field} {value!r} {problem}: type {hint}."


if __name__ == "__main__":
    errors = list(problems())
    for error in errors:
        print(f"ERROR: {error}", file=sys.stderr)
    sys.exit(1 if errors else 0)
# {% endraw %}
