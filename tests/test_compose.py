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

from .compose.images import compose_images
from .conftest import TEMPLATE, assert_ok, run

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


# ------------------------------------------------------------------------------
# docs/docker-compose.md says what the compose files do: ports, profiles, images.
# ------------------------------------------------------------------------------
PAGE = TEMPLATE / "docs" / "docker-compose.md"
PUBLISHED = re.compile(r"^(?:(?P<host>[\d.]+):)?\$\{(?P<name>\w+):-(?P<default>\d+)\}:")


@pytest.fixture(scope="module")
def rabbit_bake(cookies_session):
    """A bake with every compose service (RabbitMQ) and the default Python."""
    return cookies_session.bake(extra_context={"broker": "rabbitmq"}).project_path


def compose_services(path, filename) -> dict:
    return yaml.safe_load((path / filename).read_text())["services"]


def docs_row(first_cell: str) -> list[str]:
    """The cells of the page's table row whose first cell is ``first_cell``."""
    for line in PAGE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in {PAGE.name}")


def test_every_published_port_is_on_localhost_and_in_the_docs(rabbit_bake):
    published = {}
    for filename in COMPOSE_FILES:
        for name, service in compose_services(rabbit_bake, filename).items():
            for port in service.get("ports", []):
                found = PUBLISHED.match(port)
                assert found, f"{filename}: {name} publishes {port!r}, not from a variable with a default"
                assert found["host"] == "127.0.0.1", f"{filename}: {name} publishes {port!r} on every interface"
                published[found["name"]] = found["default"]
    names, _, what = docs_row("`PORT`, `FLOWER_PORT`, `RABBITMQ_MANAGEMENT_PORT`, `PROMETHEUS_PORT`")
    defaults = re.search(r"\(([\d, ]+)\)", what)[1].split(", ")
    assert dict(zip(re.findall(r"`(\w+)`", names), defaults, strict=True)) == published
    assert "on 127.0.0.1" in what


def test_only_the_sites_services_start_without_a_profile(rabbit_bake):
    local = compose_services(rabbit_bake, "docker-compose.yml")
    assert {name for name, service in local.items() if "profiles" in service} == {"prometheus"}
    assert local["prometheus"]["profiles"] == ["monitoring"]
    # Nothing the site needs waits for a service that only a profile starts.
    for name, service in local.items():
        assert "prometheus" not in service.get("depends_on", {}), name
    production = compose_services(rabbit_bake, "docker-compose.production.yml")
    assert not any("profiles" in service for service in production.values())


@pytest.mark.parametrize("filename", COMPOSE_FILES)
def test_the_docs_list_every_image_a_compose_file_pulls_or_builds(rabbit_bake, filename):
    _, pulls, builds = docs_row(f"`{filename}`")
    assert sorted(re.findall(r"`([^`]+)`", pulls)) == sorted(compose_images(rabbit_bake, [filename]))
    built = [service["image"] for service in compose_services(rabbit_bake, filename).values() if "build" in service]
    assert sorted(re.findall(r"`([^`]+)`", builds)) == sorted(set(built))
    # Named after the compose project, so that two checkouts never share an image.
    assert all(image.startswith("${COMPOSE_PROJECT_NAME}_") for image in built)
