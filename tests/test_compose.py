"""Both compose files are valid Compose and mean what the topology says.

Docker is not available where these tests run, so validity is proven against the
compose-spec JSON schema (check-jsonschema's vendored copy) and meaning by
reading the files: the baked project's own tests/test_processes.py checks that
every queue has a worker, there is one beat, flower is present and the Procfile
and compose run the same commands. Here we run that test module against every
bake, and show that it does catch a broken file.
"""

import re

import pytest
import yaml

from .conftest import assert_ok, run

COMPOSE_FILES = ["docker-compose.yml", "docker-compose.production.yml"]


@pytest.mark.parametrize("filename", COMPOSE_FILES)
def test_compose_file_matches_the_compose_spec(baked, filename):
    assert_ok(run(["check-jsonschema", "--builtin-schema", "vendor.compose-spec", filename], baked.path))


def test_schema_check_rejects_an_invalid_compose_file(cookies):
    path = cookies.bake().project_path
    (path / "broken.yml").write_text("services:\n  django:\n    depends_on: 42\n")
    assert run(["check-jsonschema", "--builtin-schema", "vendor.compose-spec", "broken.yml"], path).returncode != 0


def test_processes_agree_with_the_topology(baked):
    assert_ok(run(["python", "-m", "pytest", "tests/test_processes.py", "-q", "-p", "no:cacheprovider"], baked.path))


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda services: services.pop("worker-export"), id="queue-without-worker"),
        pytest.param(lambda services: services.update(beat2=services["beat"]), id="second-beat"),
        pytest.param(lambda services: services["worker-high"].update(command="celery -A config.celery_app worker"),
                     id="command-differs-from-procfile"),
    ],
)  # fmt: skip
def test_semantic_check_catches_a_broken_compose_file(cookies, breakage):
    path = cookies.bake().project_path
    compose = yaml.safe_load((path / "docker-compose.yml").read_text())
    breakage(compose["services"])
    (path / "docker-compose.yml").write_text(yaml.safe_dump(compose))

    result = run(["python", "-m", "pytest", "tests/test_processes.py", "-q", "-p", "no:cacheprovider"], path)
    # A test failed (exit code 1 and a summary naming it), not the run refused to start.
    assert result.returncode == 1, result.stdout
    assert re.search(r"^FAILED tests/test_processes\.py::", result.stdout, re.MULTILINE), result.stdout
