"""The copy-paste reference builds cleanly and includes the template's real code."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TEMPLATE


def test_docs_build_strict_with_the_templates_code(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        cwd=TEMPLATE,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The pages include config/topology.py itself, not a copy that could drift.
    source = (TEMPLATE / "{{cookiecutter.project_slug}}" / "config" / "topology.py").read_text()
    for page, text in (("topology", "max_tasks_per_child"), ("time-limits", "longest_time_limit")):
        assert text in source
        assert text in (site / page / "index.html").read_text()


def test_every_docs_page_is_in_the_nav():
    nav = (TEMPLATE / "mkdocs.yml").read_text()
    pages = sorted(path.name for path in (TEMPLATE / "docs").glob("*.md"))
    assert [page for page in pages if page not in nav] == []


# ------------------------------------------------------------------------------
# The pattern pages keep their promises: the same sections, real tests, real code.
# ------------------------------------------------------------------------------
DOCS = TEMPLATE / "docs"
PROJECT = TEMPLATE / "{{cookiecutter.project_slug}}"

# One page per pattern of the source articles; each has exactly these sections.
PATTERN_PAGES = [
    "topology.md",
    "routing.md",
    "celery-app.md",
    "dispatch-after-commit.md",
    "outbox.md",
    "idempotent-payments.md",
    "payment-states.md",
    "csv-export.md",
    "upload-processing.md",
    "canvas-fan-out.md",
    "retries-and-dead-letters.md",
    "dead-letters.md",
    "poison-messages.md",
    "time-limits.md",
    "database-connections.md",
    "beat.md",
    "session-cleanup.md",
    "cron.md",
    "monitoring.md",
    "opentelemetry.md",
    "operations.md",
    "sentry.md",
    "testing.md",
    "when-not-to-use-a-task.md",
    "broker-choice.md",
    "docker-compose.md",
]
SECTIONS = ["## The failure", "## Wrong", "## Right", "## Settings", "## Tests that prove it"]

# "tests/test_x.py::test_y" (the baked project's root, or the template repository's
# tests/) and "{{cookiecutter.project_slug}}/app/tests/test_x.py::test_y".
TEST_REFERENCE = re.compile(r"((?:\{\{cookiecutter\.project_slug\}\}/)?[\w./-]+\.py)::(\w+)")
SNIPPET = re.compile(r'^\s*-+8<-+\s+"([^"]+)"', re.MULTILINE)
SECTION_NAME = re.compile(r"^(.+?):([a-z][-_0-9a-z]*)$", re.IGNORECASE)


def page_text(name: str) -> str:
    return (DOCS / name).read_text()


def all_pages() -> list[str]:
    return sorted(path.name for path in DOCS.glob("*.md"))


def h2_headings(text: str) -> list[str]:
    """The level-2 headings of a page, outside code blocks."""
    headings, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            headings.append(line.rstrip())
    return headings


def defines_test(path: Path, name: str) -> bool:
    return bool(re.search(rf"^\s*(?:async\s+)?def {re.escape(name)}\(", path.read_text(), re.MULTILINE))


def test_pattern_pages_exist_and_are_not_the_only_pages():
    assert [page for page in PATTERN_PAGES if not (DOCS / page).is_file()] == []
    assert len(set(PATTERN_PAGES)) == len(PATTERN_PAGES)


@pytest.mark.parametrize("page", PATTERN_PAGES)
def test_pattern_page_has_the_five_sections_in_order(page):
    assert h2_headings(page_text(page)) == SECTIONS


@pytest.mark.parametrize("page", PATTERN_PAGES)
def test_pattern_page_names_the_tests_that_prove_it(page):
    proof = page_text(page).split("## Tests that prove it", 1)[1]
    assert TEST_REFERENCE.search(proof), f"{page}: 'Tests that prove it' names no path::test_name"


@pytest.mark.parametrize("page", PATTERN_PAGES)
def test_pattern_page_includes_the_templates_real_code(page):
    right = page_text(page).split("## Right", 1)[1].split("## Settings", 1)[0]
    assert SNIPPET.search(right), f"{page}: 'Right' includes no template file"


def resolve_test_file(path: str) -> list[Path]:
    """Where a referenced test file lives: the baked project first, then the template repository."""
    return [root / path for root in (PROJECT, TEMPLATE) if (root / path).is_file()]


def test_every_referenced_test_exists():
    references = [(page, *match) for page in all_pages() for match in TEST_REFERENCE.findall(page_text(page))]
    assert len(references) > 50, "the reference pattern stopped matching the pages"
    missing = [
        f"{page}: {path}::{name}"
        for page, path, name in references
        if not any(defines_test(file, name) for file in resolve_test_file(path))
    ]
    assert missing == []


def test_the_reference_check_catches_a_test_that_does_not_exist():
    assert resolve_test_file("tests/test_payments_integration.py")
    assert not any(
        defines_test(file, "test_charges_twice_on_purpose")
        for file in resolve_test_file("tests/test_payments_integration.py")
    )
    assert resolve_test_file("tests/test_docs.py") == [TEMPLATE / "tests" / "test_docs.py"]
    assert resolve_test_file("tests/test_nowhere.py") == []


def snippets() -> list[tuple[str, str]]:
    return [(page, target) for page in all_pages() for target in SNIPPET.findall(page_text(page))]


def test_every_included_file_and_named_section_exists():
    """mkdocs --strict fails on a missing section; this also catches a start without an end."""
    found = snippets()
    assert any(SECTION_NAME.match(target) for _, target in found)
    problems = []
    for page, target in found:
        match = SECTION_NAME.match(target)
        path, section = (match.group(1), match.group(2)) if match else (target, None)
        source = TEMPLATE / path
        if not source.is_file():
            problems.append(f"{page}: no file {path}")
            continue
        text = source.read_text()
        for marker in (f"[start:{section}]", f"[end:{section}]") if section else ():
            if not re.search(rf"^\s*# --8<-- {re.escape(marker)}$", text, re.MULTILINE):
                problems.append(f"{page}: {path} has no '# --8<-- {marker}' line")
    assert problems == []


# Setting and environment names in the "Settings" sections (in inline code) must exist
# in the baked project's files; these few are named on purpose although the project does
# not set them.
NAMED_BUT_UNSET = {
    "CELERY_TASK_TIME_LIMIT",  # time-limits.md: deliberately not set
    "CELERY_TASK_SOFT_TIME_LIMIT",  # time-limits.md: deliberately not set
    "WORKER_DEFAULT_CONCURRENCY",  # topology.md: built from the pool name (Pool.concurrency_env)
    "WORKER_EXPORT_CONCURRENCY",
    "WORKER_HIGH_CONCURRENCY",
    "COMPOSE_PROFILES",  # docker-compose.md: Compose's own variable, read by docker compose only
}
SETTING_NAME = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b[^`]*`")


def project_sources() -> str:
    files = [path for path in PROJECT.rglob("*") if path.is_file() and path.suffix in {".py", ".yml", ".toml", ""}]
    files += list(PROJECT.glob(".env*")) + list((PROJECT / ".envs").rglob(".*"))
    return "\n".join(path.read_text(errors="replace") for path in files if path.is_file())


def test_settings_named_on_pattern_pages_exist():
    sources = project_sources()
    sections = [
        page_text(page).split("## Settings", 1)[1].split("## Tests that prove it", 1)[0] for page in PATTERN_PAGES
    ]
    named = {name for section in sections for name in SETTING_NAME.findall(section)}
    assert "EXPORT_BATCH_SIZE" in named
    assert sorted(name for name in named - NAMED_BUT_UNSET if name not in sources) == []
    assert all(f"WORKER_{pool}_CONCURRENCY" in NAMED_BUT_UNSET for pool in ("HIGH", "DEFAULT", "EXPORT"))


def test_the_chart_is_on_the_index_and_in_the_readme():
    assert (DOCS / "img" / "benchmarks.png").stat().st_size > 10_000
    assert "img/benchmarks.png" in page_text("index.md")
    assert "](docs/img/benchmarks.png)" in (TEMPLATE / "README.md").read_text()


def test_index_lists_every_page():
    index = page_text("index.md")
    assert [page for page in all_pages() if page != "index.md" and f"({page})" not in index] == []


# ------------------------------------------------------------------------------
# Numbers and names the pages state are generated from the code (scripts/docs_facts.py).
# ------------------------------------------------------------------------------
FACTS_SCRIPT = TEMPLATE / "scripts" / "docs_facts.py"


def docs_facts(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FACTS_SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip


def test_pages_state_the_topology_and_settings_the_code_has():
    """Pool sizes, limits, queues, SLAs, beat entries, queue order and setting values."""
    result = docs_facts("--check")
    assert result.returncode == 0, result.stdout + result.stderr
    text = "".join(page_text(page) for page in all_pages())
    for block in ("pools", "queues", "beat", "queue-order", "settings"):
        assert f"<!-- facts:{block} -->" in text, block


def test_the_facts_check_catches_a_number_typed_by_hand(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    page = page_text("topology.md").replace("| `worker-high` | `high` | 4 |", "| `worker-high` | `high` | 8 |")
    (docs / "topology.md").write_text(page)
    result = docs_facts("--check", "--docs", str(docs))
    assert result.returncode == 1
    assert "-| `worker-high` | `high` | 8 |" in result.stdout and "+| `worker-high` | `high` | 4 |" in result.stdout
