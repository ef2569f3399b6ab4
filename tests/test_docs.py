"""The copy-paste reference builds cleanly and includes the template's real code."""

import subprocess
import sys
from pathlib import Path

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
    topology_page = (site / "topology" / "index.html").read_text()
    # The page includes config/topology.py itself, not a copy that could drift.
    source = (TEMPLATE / "{{cookiecutter.project_slug}}" / "config" / "topology.py").read_text()
    assert "VISIBILITY_TIMEOUT" in source
    assert "VISIBILITY_TIMEOUT" in topology_page


def test_every_docs_page_is_in_the_nav():
    nav = (TEMPLATE / "mkdocs.yml").read_text()
    pages = sorted(path.name for path in (TEMPLATE / "docs").glob("*.md"))
    assert [page for page in pages if page not in nav] == []
