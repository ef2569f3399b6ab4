"""Jinja filters that write an answer as a literal of the file it lands in.

Loaded by cookiecutter through ``_extensions`` in cookiecutter.json (a local extension:
cookiecutter puts the template's directory on sys.path, as cruft does). The pre-generation
hook has already refused what no literal can carry well (newlines and other control
characters, template syntax); these filters still escape everything, so that no answer can
end a string early and become code, a TOML key or a YAML mapping.

    {{ cookiecutter.project_name | py }}     "Acme Shop"   (a Python str literal)
    {{ cookiecutter.description | toml }}    "..."         (a TOML basic string)
    {{ cookiecutter.project_slug | yaml }}   "acme_shop"   (a YAML double-quoted scalar)

Keep the filter names stable: cruft renders a project's old and new template versions in
one process, with whichever version of this module it imported first.
"""

from jinja2.ext import Extension

# Escapes every format below reads the same way.
COMMON = {"\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _escape(value: str, quote: str, escape_unprintable) -> str:
    table = COMMON | {quote: "\\" + quote}
    return "".join(table.get(char) or (char if char.isprintable() else escape_unprintable(char)) for char in value)


def _unicode_escape(char: str) -> str:
    # \uXXXX or \UXXXXXXXX: Python, TOML and YAML double-quoted strings all read these.
    return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"


def python_string(value: str) -> str:
    """A str literal as ruff format writes it: double quotes, unless the value holds more
    double quotes than single ones (so `ruff format --check` passes on the baked code)."""
    quote = "'" if value.count('"') > value.count("'") else '"'
    return quote + _escape(value, quote, _unicode_escape) + quote


def double_quoted(value: str) -> str:
    """A string in double quotes with the escapes above, read the same way as a TOML basic
    string and as a YAML double-quoted scalar (always a string there: never a bool, null
    or number)."""
    return '"' + _escape(value, '"', _unicode_escape) + '"'


class AnswerFilters(Extension):
    def __init__(self, environment):
        super().__init__(environment)
        environment.filters.update(py=python_string, toml=double_quoted, yaml=double_quoted)
