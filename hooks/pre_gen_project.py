"""Reject answers that would bake a broken project, saying what to fix."""

import keyword
import re
import sys
import zoneinfo

# Names the baked project already uses, or that would shadow a dependency.
RESERVED = {
    "config", "core", "users", "payments", "exports", "tests", "test", "django", "celery",
    "kombu", "redis", "environ", "flower", "gunicorn", "whitenoise", "psycopg", "site", "static",
}  # fmt: skip

ANSWERS = {
    "project_slug": "{{ cookiecutter.project_slug }}",
    "project_name": "{{ cookiecutter.project_name }}",
    "timezone": "{{ cookiecutter.timezone }}",
    "domain_name": "{{ cookiecutter.domain_name }}",
    "author_email": "{{ cookiecutter.author_email }}",
    "python_version": "{{ cookiecutter.python_version }}",
    "ci": "{{ cookiecutter.ci }}",
    "storage": "{{ cookiecutter.storage }}",
    "broker": "{{ cookiecutter.broker }}",
}
CHOICES = {
    "python_version": ("3.11", "3.12", "3.13"),
    "ci": ("github", "none"),
    "storage": ("local", "s3"),
    "broker": ("redis", "rabbitmq"),
}


def problems(answers):
    slug = answers["project_slug"]
    if not re.fullmatch(r"[a-z][a-z0-9_]*", slug) or keyword.iskeyword(slug):
        yield (
            f"project_slug {slug!r} is not a valid Python package name: use lowercase letters, digits and "
            "underscores, starting with a letter (e.g. 'acme_shop')."
        )
    elif slug in RESERVED or slug in sys.stdlib_module_names:
        yield f"project_slug {slug!r} would shadow a module the project imports; pick another name (e.g. '{slug}_site')."
    if not answers["project_name"].strip():
        yield "project_name is empty: give the project a human-readable name."
    try:
        zoneinfo.ZoneInfo(answers["timezone"])
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        yield f"timezone {answers['timezone']!r} is not an IANA time zone name (e.g. 'UTC', 'Europe/Berlin')."
    if not re.fullmatch(r"(?=.{1,253}$)([a-z0-9-]+\.)+[a-z]{2,}", answers["domain_name"]):
        yield f"domain_name {answers['domain_name']!r} is not a domain (e.g. 'example.com', no scheme or path)."
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", answers["author_email"]):
        yield f"author_email {answers['author_email']!r} is not an email address."
    for name, allowed in CHOICES.items():
        if answers[name] not in allowed:
            yield f"{name} {answers[name]!r} is not one of: {', '.join(allowed)}."


if __name__ == "__main__":
    errors = list(problems(ANSWERS))
    for error in errors:
        print(f"ERROR: {error}", file=sys.stderr)
    sys.exit(1 if errors else 0)
