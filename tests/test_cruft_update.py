"""A baked project follows the template: `cruft update` from the previous commit.

Every bake records the template, its commit and the answers in `.cruft.json`
(hooks/post_gen_project.py). Here a project is baked from the template's previous
commit, committed and changed by its "team", and then updated to the newest commit
plus one more template change: the update applies cleanly, keeps the team's change,
and leaves every file the template owns as a fresh bake of the new commit would.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import missing

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ANSWERS = {"project_name": "Upgrade Shop", "broker": "redis"}
# The bake writes fresh secrets into these; cruft skips them (CRUFT_SKIP in the hook).
SECRET_PATHS = (".env", ".envs")


def sh(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PWD": str(cwd),  # as a shell started there would have it
        "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com",
    }  # fmt: skip
    result = subprocess.run(list(map(str, args)), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, f"{' '.join(map(str, args))}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def bake(template: Path, output: Path) -> Path:
    output.mkdir()
    answers = [f"{key}={value}" for key, value in ANSWERS.items()]
    sh(BIN / "cookiecutter", template, "--no-input", "--output-dir", output, *answers, cwd=output)
    (project,) = output.iterdir()
    return project


def template_files(project: Path) -> dict[str, bytes]:
    """Every file the template owns: all but git's, the secrets, and the cruft record."""
    files = {}
    for path in sorted(project.rglob("*")):
        relative = path.relative_to(project)
        if path.is_file() and relative.parts[0] not in (".git", ".cruft.json", *SECRET_PATHS):
            files[str(relative)] = path.read_bytes()
    return files


@pytest.fixture
def template(tmp_path) -> Path:
    """A clone of this repository (its committed history, not the working tree)."""
    clone = tmp_path / "template"
    sh("git", "clone", "--quiet", "--no-local", ROOT, clone, cwd=tmp_path)
    if sh("git", "rev-parse", "--verify", "--quiet", "HEAD~1", cwd=clone, check=False).returncode != 0:
        message = (
            "the template's history has no previous commit (a shallow clone?): fetch it with git fetch --unshallow"
        )
        missing(message)
    return clone


def test_update_from_the_previous_commit(template, tmp_path):
    branch = sh("git", "rev-parse", "--abbrev-ref", "HEAD", cwd=template).stdout.strip()
    previous = sh("git", "rev-parse", "HEAD~1", cwd=template).stdout.strip()

    # A team bakes the project from the previous commit and commits it.
    sh("git", "checkout", "--quiet", "--detach", previous, cwd=template)
    project = bake(template, tmp_path / "team")
    sh("git", "checkout", "--quiet", branch, cwd=template)
    sh("git", "init", "--quiet", cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "--quiet", "-m", "baked", cwd=project)
    if not (project / ".cruft.json").exists():
        # Baked before bakes recorded their template: link it, as the docs tell such projects.
        sh(BIN / "cruft", "link", template, "--checkout", previous, "--no-input",
           "--extra-context", json.dumps(ANSWERS), cwd=project)  # fmt: skip
        linked = json.loads((project / ".cruft.json").read_text())
        (project / ".cruft.json").write_text(json.dumps(linked | {"skip": list(SECRET_PATHS)}, indent=2))
        sh("git", "add", ".cruft.json", cwd=project)
        sh("git", "commit", "--quiet", "-m", "link the template", cwd=project)
    record = json.loads((project / ".cruft.json").read_text())
    assert record["commit"] == previous
    assert record["context"]["cookiecutter"]["project_name"] == "Upgrade Shop"

    # The team changes its project; the template gets one more change of its own.
    readme = project / "README.md"
    readme.write_text(readme.read_text() + "\n## Our notes\n\nDeploys go out on Tuesdays.\n")
    sh("git", "commit", "--quiet", "-am", "our notes", cwd=project)
    makefile = template / "{{cookiecutter.project_slug}}" / "Makefile"
    makefile.write_text(makefile.read_text() + "\n# A template change after the bake.\n")
    sh("git", "commit", "--quiet", "-am", "template change", cwd=template)
    newest = sh("git", "rev-parse", "HEAD", cwd=template).stdout.strip()

    check = sh(BIN / "cruft", "check", cwd=project, check=False)
    assert check.returncode != 0 and "out of date" in check.stdout + check.stderr, check.stdout

    sh(BIN / "cruft", "update", "--skip-apply-ask", cwd=project)

    assert json.loads((project / ".cruft.json").read_text())["commit"] == newest
    assert not list(project.rglob("*.rej")), "a hunk did not apply"
    assert "# A template change after the bake." in (project / "Makefile").read_text()
    assert "Deploys go out on Tuesdays." in readme.read_text()
    assert sh(BIN / "cruft", "check", cwd=project, check=False).returncode == 0
    # Everything the template owns is what a fresh bake of the newest commit gives.
    updated = template_files(project)
    fresh = template_files(bake(template, tmp_path / "fresh"))
    updated["README.md"] = updated["README.md"].replace(b"\n## Our notes\n\nDeploys go out on Tuesdays.\n", b"")
    assert updated.keys() == fresh.keys()
    assert [name for name in fresh if updated[name] != fresh[name]] == []
