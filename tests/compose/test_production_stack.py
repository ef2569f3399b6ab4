"""`docker-compose.production.yml`, for real, exactly as the baked README's deploy section says.

The image is built from the production requirements alone (the Dockerfile's
production target never sees requirements/local.txt), so a dependency that only the
test tools pulled in shows up here as a crash at start-up.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import make_stack
from .prometheus import check_prometheus
from .stack import Stack, wait_until

FILES = ["docker-compose.production.yml"]
DOMAIN = "example.com"  # the template's default domain_name
# The services that run the project's image (the migrate service has exited by now).
DJANGO_SERVICES = {"django", "worker-high", "worker-default", "worker-export", "beat", "outbox-relay", "flower"}


def get(stack: Stack, path: str) -> tuple[int, dict, bytes]:
    """A request as the TLS-terminating proxy forwards it: the site's host, https."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.env['PORT']}{path}", headers={"Host": DOMAIN, "X-Forwarded-Proto": "https"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def readme_commands(stack: Stack) -> list[str]:
    """The shell commands of the README's deploy section, in order."""
    readme = (stack.path / "README.md").read_text()
    section = readme.split("## Deploy with docker compose", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ") and line.strip()]


def awkward_database_password(stack: Stack) -> str:
    """Give the generated Postgres password a double quote and an apostrophe, as a user's own may have.

    PgBouncer's userlist.txt quotes with double quotes (the entrypoint must double
    them), the URLs carry the password percent-encoded. Returns the new password.
    """
    env_file = stack.path / ".envs/.production/.postgres"
    text = env_file.read_text()
    generated = re.search(r"^POSTGRES_PASSWORD=(\w+)$", text, re.MULTILINE).group(1)
    password = generated + "\"'"
    text = text.replace(f"POSTGRES_PASSWORD={generated}", f"POSTGRES_PASSWORD={password}")
    env_file.write_text(text.replace(f":{generated}@", f":{urllib.parse.quote(password, safe='')}@"))
    return password


def allow_sandbox_payments(stack: Stack) -> None:
    """The payment tests below pay with the sandbox provider, as a staging site would: allowed on purpose.

    As shipped (no STRIPE_SECRET_KEY), production takes no payments at all, sandbox ones
    included; test_check_deploy_raises_only_the_sandbox_warning checks that too.
    """
    env_file = stack.path / ".envs/.production/.django"
    text = env_file.read_text()
    assert "\nPAYMENTS_ALLOW_SANDBOX=false\n" in text  # the shipped default
    env_file.write_text(text.replace("\nPAYMENTS_ALLOW_SANDBOX=false\n", "\nPAYMENTS_ALLOW_SANDBOX=true\n"))


# Files a user may leave beside the code, which no deny-list names: the image must not get them.
STRAY_FILES = {
    "k8s/overlays/staging/secrets.env": "DJANGO_SECRET_KEY=StrayStagingSecret0123456789abcdefABCDEF\n",
    "backup-2026-12-01.sql": "-- pg_dump\nCOPY users_user (password) FROM stdin;\nStrayDumpedPasswordHash0123456789abcdef\n",
    "config/settings/.env.production": "STRIPE_SECRET_KEY=sk_live_StrayStripeKey0123456789abcdefABC\n",
}
# The generated secrets: 32 or 64 letters and digits (hooks/post_gen_project.py, token()).
GENERATED_SECRET = re.compile(r"(?<![A-Za-z0-9])(?:[A-Za-z0-9]{64}|[A-Za-z0-9]{32})(?![A-Za-z0-9])")


def secrets_of(path: Path) -> set[str]:
    """Every generated secret in the project's secret files, and the stray files' secret lines."""
    files = [path / ".env", *path.glob(".envs/*/.*"), *path.glob("k8s/overlays/*/secrets.env")]
    found = {secret for file in files for secret in GENERATED_SECRET.findall(file.read_text())}
    found |= {re.search(r"Stray\w+", text).group(0) for text in STRAY_FILES.values()}
    return found


def image_bytes(image: str) -> Iterator[tuple[str, bytes]]:
    """Each layer of a local image, uncompressed, as ``docker save`` writes it: every file's bytes are in it."""
    saved = subprocess.run(["docker", "save", image], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(saved)) as archive:
        for member in archive:
            if not member.isfile():
                continue
            data = archive.extractfile(member).read()
            if data[:2] == b"\x1f\x8b":  # a gzip-compressed layer
                data = gzip.decompress(data)
            yield member.name, data


@pytest.fixture(scope="module")
def production_stack(docker_ready, tmp_path_factory):
    # With the Kubernetes manifests: their overlay's secrets.env sits in the build context's directory.
    stack = make_stack(tmp_path_factory, FILES, kubernetes="yes")
    awkward_database_password(stack)
    allow_sandbox_payments(stack)
    for name, text in STRAY_FILES.items():
        (stack.path / name).parent.mkdir(parents=True, exist_ok=True)
        (stack.path / name).write_text(text)
    commands = readme_commands(stack)
    assert commands == ["docker compose -f docker-compose.production.yml up --build --wait"], commands
    with stack.started(seed_transactions=1000):  # up --build: the README's command, with --detach and a timeout
        yield stack


@pytest.fixture
def stack(production_stack) -> Stack:
    return production_stack


def test_every_service_is_healthy(stack):
    for container in stack.containers():
        service = stack.service_of(container)
        assert container["State"]["Health"]["Status"] == "healthy", service
        assert container["RestartCount"] == 0, service


def test_gunicorn_serves_pages_and_static_files(stack):
    status, headers, _ = get(stack, "/healthz")
    assert status == 200
    assert headers.get("Server", "").startswith("gunicorn")
    assert get(stack, "/readyz")[0] == 200
    status, _, body = get(stack, "/admin/login/")
    assert status == 200 and b"csrfmiddlewaretoken" in body
    static = re.search(rb'href="(/static/admin/css/base\.[0-9a-f]+\.css)"', body)
    assert static, "the admin page links no hashed stylesheet (collectstatic did not run?)"
    status, headers, _ = get(stack, static.group(1).decode())
    assert (status, headers["Content-Type"].split(";")[0]) == (200, "text/css")
    assert "immutable" in headers.get("Cache-Control", "")  # whitenoise serves the hashed file


def test_plain_http_is_redirected_to_https(stack):
    request = urllib.request.Request(f"http://127.0.0.1:{stack.env['PORT']}/", headers={"Host": DOMAIN})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.build_opener(NoRedirect).open(request, timeout=10)
    assert answer.value.code == 301 and answer.value.headers["Location"] == f"https://{DOMAIN}/"


def test_check_deploy_raises_only_the_sandbox_warning(stack):
    result = stack.compose("exec", "-T", "django", "python", "manage.py", "check", "--deploy", check=False)
    assert result.returncode == 0, result.stderr
    issues = re.findall(r"\(([\w.]+\.[EW]\d{3})\)", result.stdout + result.stderr)
    assert issues == ["payments.W001"], result.stdout + result.stderr  # the sandbox, allowed by the fixture

    # As shipped: no Stripe key, the sandbox not allowed. No payments at all, and the check fails.
    command = ["exec", "-T", "-e", "PAYMENTS_ALLOW_SANDBOX=false", "django", "python", "manage.py", "check", "--deploy"]
    result = stack.compose(*command, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    issues = re.findall(r"\(([\w.]+\.[EW]\d{3})\)", result.stdout + result.stderr)
    assert issues == ["payments.E001"], result.stdout + result.stderr


def test_no_container_runs_as_root(stack):
    for container in stack.containers():
        processes = stack.process_uids(container)
        assert processes, stack.service_of(container)
        root = [command for uid, command in processes if uid == 0]
        assert not root, f"{stack.service_of(container)} runs as root: {root}"
        if stack.service_of(container) in DJANGO_SERVICES:
            # The Dockerfile's fixed uid: the Kubernetes manifests' runAsUser (config/kubernetes.py).
            assert {uid for uid, _ in processes} == {10001}, (stack.service_of(container), processes)


def test_the_image_holds_no_secret_of_the_project(stack):
    """The production image is built from the project directory, where the secrets live
    (.env, .envs/, k8s/overlays/*/secrets.env) and where users leave other things (a
    dump, another overlay's secrets). .dockerignore lets in only what the image needs,
    so none of it is in any layer of the image, generated or not."""
    secrets = secrets_of(stack.path)
    assert len(secrets) >= 7 + len(STRAY_FILES), secrets  # the bake's own (7 with Redis), and each stray file's
    image = f"{stack.name}_django"
    layers = dict(image_bytes(image))
    leaks = {
        (layer, secret[:6] + "...") for layer, data in layers.items() for secret in secrets if secret.encode() in data
    }
    assert not leaks, f"secrets in the image {image}: {sorted(leaks)}"
    # The scan finds what is there: the project's own code is in a layer.
    assert any((stack.path / "manage.py").read_bytes() in data for data in layers.values())


def test_only_the_web_port_is_published_and_only_on_localhost(stack):
    published = {}
    for container in stack.containers():
        for bindings in (container["NetworkSettings"]["Ports"] or {}).values():
            for binding in bindings or []:
                published.setdefault(stack.service_of(container), []).append(binding["HostIp"])
    assert published == {"django": ["127.0.0.1"]}  # flower, postgres and redis are internal


def test_prometheus_scrapes_the_web_through_the_production_settings(stack):
    """By the service's name, in plain HTTP, past the host check and the HTTPS redirect;
    with the credentials of .envs/.production/.metrics. Not published: asked from inside."""

    def fetch(path: str) -> dict:
        return json.loads(stack.exec("prometheus", "wget", "-q", "-O", "-", f"http://127.0.0.1:9090{path}"))

    check_prometheus(fetch)


def psql(stack: Stack, sql: str) -> list[dict]:
    """Rows of ``sql`` run by psql in the postgres container, on the app's database."""
    output = stack.exec(
        "postgres", "sh", "-c", 'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -v ON_ERROR_STOP=1 --csv -c "$0"', sql
    )
    return list(csv.DictReader(io.StringIO(output)))


def pgbouncer_console(stack: Stack, command: str) -> list[dict]:
    """Rows of a ``SHOW ...`` command on PgBouncer's admin console (the "pgbouncer" database)."""
    output = stack.exec(
        "pgbouncer",
        "sh",
        "-c",
        'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -p 6432 -U "$POSTGRES_USER" -d pgbouncer --csv -c "$0"',
        command,
    )
    return list(csv.DictReader(io.StringIO(output)))


def address(container: dict) -> str:
    (network,) = container["NetworkSettings"]["Networks"].values()
    return network["IPAddress"]


# The app's sessions on Postgres, but not the one asking.
APP_BACKENDS = (
    "SELECT pid, host(client_addr) AS addr FROM pg_stat_activity WHERE datname = current_database()"
    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
)
# Every Django process that uses the database while it runs (flower does not).
DATABASE_CLIENTS = ("django", "worker-high", "worker-default", "worker-export", "beat", "outbox-relay")


def test_every_django_service_reaches_postgres_through_pgbouncer(stack):
    assert get(stack, "/readyz")[0] == 200  # web: SELECT 1
    assert stack.action("pay-one")["result"] == "paid"  # worker-high
    assert stack.action("watchdog-now")["queue"] == "default"  # worker-default
    assert stack.action("export-now")["queue"] == "export"  # worker-export; beat and outbox-relay poll on their own

    services = {address(container): stack.service_of(container) for container in stack.containers()}
    pgbouncer = address(stack.containers("pgbouncer")[0])
    backends = psql(stack, APP_BACKENDS)
    assert backends, "no Django session on Postgres at all"
    assert {row["addr"] for row in backends} == {pgbouncer}, [services.get(row["addr"]) for row in backends]

    clients = [row for row in pgbouncer_console(stack, "SHOW CLIENTS") if row["database"] != "pgbouncer"]
    assert set(DATABASE_CLIENTS) <= {services.get(row["addr"]) for row in clients}, clients
    (pool,) = [row for row in pgbouncer_console(stack, "SHOW POOLS") if row["database"] != "pgbouncer"]
    assert pool["pool_mode"] == "transaction"
    pool_size = int(stack.config()["services"]["pgbouncer"]["environment"]["PGBOUNCER_DEFAULT_POOL_SIZE"])
    assert len(backends) <= pool_size


def test_csv_export_through_pgbouncer_equals_one_plain_copy(stack):
    """The export's COPY ... TO STDOUT runs through PgBouncer, byte for byte what one COPY gives."""
    job = stack.action("export-now")["job"]
    done = stack.action("export-status", job=job)
    assert done["status"] == "completed" and done["processed_rows"] >= 1000
    assert done["sha256"] == stack.action("export-reference")["sha256"]


def test_terminated_server_connections_fail_no_task_and_no_request(stack):
    assert stack.action("pay-one")["result"] == "paid"  # PgBouncer holds server connections
    terminated = psql(stack, f"SELECT pg_terminate_backend(pid) AS done FROM ({APP_BACKENDS}) AS app")
    assert terminated and all(row["done"] == "t" for row in terminated)

    # The clients' connections are to PgBouncer, which opens new server connections.
    assert get(stack, "/readyz")[0] == 200
    payment = stack.action("pay-one")
    assert (payment["result"], payment["retries"]) == ("paid", 0)
    export = stack.action("export-now")
    assert export["retries"] == 0
    assert stack.action("export-status", job=export["job"])["status"] == "completed"


def test_migrate_connects_to_postgres_directly(stack):
    """With PgBouncer stopped, the migrate service still runs: it does not go through it."""
    stack.compose("stop", "pgbouncer")
    try:
        result = stack.compose("run", "--rm", "--no-deps", "migrate", check=False)
    finally:
        stack.up()  # PgBouncer back, every service healthy again
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No migrations to apply" in result.stdout
    assert get(stack, "/readyz")[0] == 200


def test_redis_restart_during_payments_loses_and_doubles_nothing(stack):
    orders = stack.action("payments-start", count=30, slow=0.5)["orders"]
    wait_until(lambda: stack.action("payments-status", orders=json.dumps(orders))["paid"] >= 5, 120, "5 payments")

    stack.compose("restart", "redis")  # append-only file: queued and unacked messages survive

    try:
        final = wait_until(
            lambda: (s := stack.action("payments-status", orders=json.dumps(orders)))["paid"] == len(orders) and s,
            300,
            "every order paid after the Redis restart",
            interval=3,
        )
    except AssertionError as timeout:  # where the payments stand, and what the payment pool said
        status = stack.action("payments-status", orders=json.dumps(orders))
        raise AssertionError(f"{timeout}: {status}\n{stack.logs(200, 'worker-high')}") from None
    assert final["charges"] == final["charged_keys"] == len(orders)  # each charged exactly once
