"""Every pair of option values bakes a clean, checkable project."""

import itertools
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import CHOICES, MATRIX, TEMPLATE, assert_ok, run

OTEL = re.compile(r"opentelemetry|otlp|\botel_", re.IGNORECASE)

# Cookiecutter's own syntax. Django templates in the project legitimately use
# {% if %} and {{ }}, but never {%- (whitespace control), raw blocks or our names.
LEFTOVERS = re.compile(r"cookiecutter\.|\{%-|-%\}|\{% *(raw|endraw) *%\}|!!![A-Z_]+!!!")


@pytest.mark.parametrize(
    ("text", "leftover"),
    [
        ("slug = '{{ cookiecutter.project_slug }}'", True),
        ("{%- if cookiecutter.storage == 's3' %}", True),
        ("DJANGO_SECRET_KEY=!!!DJANGO_SECRET_KEY!!!", True),
        ("{% raw %}", True),
        ("{% if order.paid %}{{ order.pk }}{% endif %}", False),  # Django template syntax is fine
    ],
)
def test_leftover_detector(text, leftover):
    assert bool(LEFTOVERS.search(text)) is leftover


def test_bakes_without_template_syntax_left(baked):
    offenders = []
    for path in baked.path.rglob("*"):
        assert "{{" not in path.name and "}}" not in path.name, path
        if path.is_file():
            text = path.read_text(errors="replace")
            offenders += [f"{path.relative_to(baked.path)}: {m.group(0)}" for m in LEFTOVERS.finditer(text)]
    assert offenders == []


def test_vendored_files_bake_byte_for_byte(baked):
    """Cookiecutter renders every file with Jinja: vendored files (Pico CSS) must come out
    unchanged. A "{{" or "{#" in a future version would be eaten, or break the bake."""
    project = TEMPLATE / "{{cookiecutter.project_slug}}"
    vendored = list((project / "{{cookiecutter.project_slug}}" / "static" / "vendor").rglob("*"))
    assert any(path.name == "pico.min.css" for path in vendored)
    for source in filter(Path.is_file, vendored):
        relative = str(source.relative_to(project)).replace("{{cookiecutter.project_slug}}", baked.path.name)
        assert (baked.path / relative).read_bytes() == source.read_bytes(), relative


def test_ruff_lint_and_format_clean(baked):
    assert_ok(run(["ruff", "check", "."], baked.path))
    assert_ok(run(["ruff", "format", "--check", "."], baked.path))


@pytest.mark.parametrize("name", ["Widget Works", "B2B"])
def test_ruff_clean_whatever_the_slug(cookies, name):
    """Import sorting depends on the package name: a slug after "config" must sort cleanly too."""
    path = cookies.bake(extra_context={"project_name": name}).project_path
    assert_ok(run(["ruff", "check", "."], path))
    assert_ok(run(["ruff", "format", "--check", "."], path))


def test_manage_py_check_passes_at_warning_level(baked):
    assert_ok(run(["python", "manage.py", "check", "--fail-level", "WARNING"], baked.path))


PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings.production",
    "DJANGO_SECRET_KEY": "x7$Kq!vZ2p@Lm9#Rt4^Wb6&Yc8*Nd1(Fe3)Gh5_Jk0+Ps-Qu=Vw?Xy<Za>Bc:Df;",
    "DJANGO_AWS_STORAGE_BUCKET_NAME": "dummy-bucket",
    "DATABASE_URL": "postgres://user:password@db.invalid:5432/app",
    "REDIS_URL": "redis://redis.invalid:6379/0",
    "STRIPE_SECRET_KEY": "sk_test_dummy",
    "STRIPE_WEBHOOK_SECRET": "whsec_dummy",
}


def test_deploy_check_passes_with_production_settings(baked):
    """With the production env's defaults (HSTS included) and real secrets, not one warning."""
    args = ["python", "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    assert_ok(run(args, baked.path, env=PRODUCTION_ENV))


@pytest.mark.parametrize(
    ("hsts", "refused"),
    [
        ({"DJANGO_SECURE_HSTS_PRELOAD": "true"}, False),  # a year with subdomains: what the list asks for
        ({"DJANGO_SECURE_HSTS_PRELOAD": "true", "DJANGO_SECURE_HSTS_SECONDS": "60"}, True),
        ({"DJANGO_SECURE_HSTS_PRELOAD": "true", "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "false"}, True),
    ],
)
def test_deploy_check_refuses_a_preload_the_list_would_reject(cookies_session, hsts, refused):
    """HSTS preload is opt-in (off by default, security.W021 silenced on purpose); opted
    into with less than a year or without subdomains, the deploy check fails (core.E001)."""
    path = cookies_session.bake().project_path
    result = run(
        ["python", "manage.py", "check", "--deploy", "--fail-level", "WARNING"], path, env=PRODUCTION_ENV | hsts
    )
    assert ("core.E001" in result.stdout + result.stderr) is refused, result.stdout + result.stderr
    assert (result.returncode != 0) is refused


def test_migrations_are_complete(baked):
    assert_ok(run(["python", "manage.py", "makemigrations", "--check", "--dry-run"], baked.path))


def test_options_shape_the_files(baked):
    context, path = baked.context, baked.path
    assert f"ARG PYTHON_VERSION={context['python_version']}" in (path / "Dockerfile").read_text()
    # The code's floor does not follow the option (tests/test_python_floor.py).
    assert 'target-version = "py311"' in (path / "pyproject.toml").read_text()

    workflow = path / ".github" / "workflows" / "ci.yml"
    assert workflow.exists() == (context["ci"] == "github")
    if workflow.exists():
        assert_ok(run(["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(workflow)], path))

    uses_s3 = context["storage"] == "s3"
    assert ("S3Storage" in (path / "config/settings/production.py").read_text()) == uses_s3
    assert ("django-storages" in (path / "requirements/production.txt").read_text()) == uses_s3

    uses_rabbitmq = context["broker"] == "rabbitmq"
    for compose_file in ("docker-compose.yml", "docker-compose.production.yml"):
        assert ("\n  rabbitmq:\n" in (path / compose_file).read_text()) == uses_rabbitmq, compose_file
    for env in ("local", "production"):
        assert (path / ".envs" / f".{env}" / ".rabbitmq").exists() == uses_rabbitmq
        assert ("CELERY_BROKER_URL=amqp://" in (path / ".envs" / f".{env}" / ".django").read_text()) == uses_rabbitmq
    assert (path / "tests/test_rabbitmq_integration.py").exists() == uses_rabbitmq
    assert (path / "tests/test_outbox_integration.py").exists() != uses_rabbitmq  # its outage is a Redis one
    base = (path / "config/settings/base.py").read_text()
    assert ('"x-queue-type": "quorum"' in base) == uses_rabbitmq
    assert ("visibility_timeout" in base) != uses_rabbitmq

    traced = context["opentelemetry"] == "yes"
    assert (path / "config/telemetry.py").exists() == traced
    assert (path / "tests/test_telemetry_integration.py").exists() == traced
    assert ("opentelemetry-sdk==" in (path / "requirements/base.txt").read_text()) == traced
    # Answered no: not a word of it, apart from the answer recorded in .cruft.json.
    mentions = [
        file.relative_to(path)
        for file in path.rglob("*")
        if file.is_file() and file.name != ".cruft.json" and OTEL.search(file.read_text(errors="replace"))
    ]
    assert bool(mentions) == traced, mentions

    uses_sentry = context["sentry"] == "yes"
    assert (path / "config/sentry.py").exists() == uses_sentry
    assert (path / "tests/test_sentry_integration.py").exists() == uses_sentry
    assert ("sentry-sdk==" in (path / "requirements/base.txt").read_text()) == uses_sentry
    assert ("SENTRY_DSN=" in (path / ".envs/.production/.django").read_text()) == uses_sentry
    if not uses_sentry:  # not a word of it left (but in the answers): no import, setting, variable or comment
        mentions = [
            str(file.relative_to(path))
            for file in path.rglob("*")
            if file.is_file() and file.name != ".cruft.json" and "sentry" in file.read_text(errors="replace").lower()
        ]
        assert mentions == []


def env_names(path) -> set[str]:
    """The variables an env file sets (KEY=value lines; comments and blanks aside)."""
    lines = path.read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if "=" in line and not line.lstrip().startswith("#")}


def test_kubernetes_option_ships_manifests_from_the_topology(baked):
    context, path = baked.context, baked.path
    kubernetes = context["kubernetes"] == "yes"
    for shipped in ("k8s/base/workers.yaml", "k8s/deploy.sh", "config/kubernetes.py", "tests/test_kubernetes.py"):
        assert (path / shipped).exists() == kubernetes, shipped
    assert ("kubernetes-validate==" in (path / "requirements/local.txt").read_text()) == kubernetes
    if not kubernetes:
        return
    overlay = path / "k8s/overlays/production"
    # The bake wrote the Secret's file with fresh secrets; git will not see it.
    secrets = (overlay / "secrets.env").read_text()
    assert "!!!" not in secrets
    example = (overlay / "secrets.env.example").read_text()
    assert "change-me" in example
    assert not any(token in example for token in re.findall(r"[A-Za-z0-9]{32,}", secrets))  # no real secret
    assert env_names(overlay / "secrets.env") == env_names(overlay / "secrets.env.example")
    assert "k8s/overlays/*/secrets.env" in (path / ".gitignore").read_text()
    # The ConfigMap and the Secret carry the variables the production env files give
    # Django, plus what KEDA needs to read the broker.
    production = path / ".envs/.production"
    django = env_names(production / ".django") | env_names(production / ".metrics")
    database = {"DATABASE_URL", "DATABASE_DIRECT_URL", "DATABASE_TRANSACTION_POOLING"}
    django |= database & env_names(production / ".postgres")
    cluster = env_names(overlay / "config.env") | env_names(overlay / "secrets.env")
    assert django - cluster == set()
    keda = {"KEDA_RABBITMQ_URL"} if context["broker"] == "rabbitmq" else {"KEDA_REDIS_ADDRESS", "KEDA_REDIS_PASSWORD"}
    assert cluster - django == keda
    assert not env_names(overlay / "config.env") & env_names(overlay / "secrets.env")
    # The base was rendered at bake time, for the broker and storage answered.
    autoscaling = (path / "k8s/base/autoscaling.yaml").read_text()
    assert autoscaling.count(f"type: {context['broker']}") == 4  # high, default, low, export
    assert (path / "k8s/base/media.yaml").exists() == (context["storage"] == "local")
    assert_ok(run([sys.executable, "-m", "config.kubernetes", "--check"], path))
    if context["broker"] == "redis":  # the reference page shows this bake's worker-high
        page = (TEMPLATE / "docs" / "kubernetes.md").read_text()
        shown = yaml.safe_load(page.split("Each pool's `ScaledObject`")[1].split("```yaml")[1].split("```")[0])
        rendered = [item for item in yaml.safe_load_all(autoscaling) if item and item["kind"] == "ScaledObject"]
        assert shown["spec"] == rendered[0]["spec"]


@pytest.mark.parametrize("pool", ["worker-high", "worker-default", "worker-export"])
def test_worker_command_prints_from_the_topology(baked, pool):
    result = run(["python", "-m", "config.worker", pool, "--print"], baked.path)
    assert_ok(result)
    assert "celery --app=config.celery_app worker" in result.stdout
    assert "--queues=" in result.stdout


def test_secrets_are_generated_per_bake(cookies):
    first, second = cookies.bake(), cookies.bake()
    pattern = re.compile(r"^DJANGO_SECRET_KEY=(.+)$", re.MULTILINE)
    keys = [
        pattern.search((r.project_path / ".envs/.production/.django").read_text()).group(1) for r in (first, second)
    ]
    assert len(keys[0]) >= 50
    assert keys[0] != keys[1]


def test_secret_files_are_readable_by_their_owner_only(cookies):
    """Every file the bake writes a secret into is mode 0600, whatever the umask; the
    committed example of the Kubernetes Secret holds none and stays readable."""
    path = cookies.bake(extra_context={"kubernetes": "yes", "broker": "rabbitmq"}).project_path
    secret_files = [path / ".env", *path.glob(".envs/*/.*"), path / "k8s/overlays/production/secrets.env"]
    assert len(secret_files) >= 9
    modes = {str(file.relative_to(path)): oct(file.stat().st_mode & 0o777) for file in secret_files}
    assert set(modes.values()) == {"0o600"}, modes
    example = path / "k8s/overlays/production/secrets.env.example"
    assert "change-me" in example.read_text()
    assert example.stat().st_mode & 0o044  # no secret in it: others may read it


def test_the_build_context_lets_in_only_what_the_image_needs(baked):
    """.dockerignore is an allow-list (everything out, the image's files back in). Docker's
    own reading of it is tested on the built image (tests/compose/test_production_stack.py)."""
    lines = [line for line in (baked.path / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "*"
    allowed = sorted(line[1:].rstrip("/") for line in lines if line.startswith("!"))
    assert allowed == sorted(["config", baked.path.name, "requirements", "manage.py"])
    assert not any(line.startswith(("!.env", "!k8s", "!.")) for line in lines)


def test_compose_runs_as_the_user_who_baked_but_never_as_root(cookies):
    """.env carries the baker's ids; docker-compose.yml builds the development image with them.

    Root's are never passed on: a project baked by root (CI, a server) runs its containers
    as the image's own user, 10001, which gets ./media, the one directory they write, and .env.
    (The Dockerfile's own refusal of uid 0: tests/compose/test_local_stack.py.)
    """
    path = cookies.bake().project_path
    env = (path / ".env").read_text()
    if os.getuid() == 0:
        assert "\nAPP_UID=10001\nAPP_GID=10001\n" in env
        # ./media and .env (0600, read by config/settings/base.py in the containers) are that user's.
        for owned in (path / "media", path / ".env"):
            assert (owned.stat().st_uid, owned.stat().st_gid) == (10001, 10001), owned
    else:
        assert f"\nAPP_UID={os.getuid()}\nAPP_GID={os.getgid()}\n" in env
        assert not (path / "media").exists()


def test_the_matrix_bakes_every_pair_of_option_values():
    baked_pairs = {
        ((a, combination[a]), (b, combination[b]))
        for combination in MATRIX
        for a, b in itertools.combinations(CHOICES, 2)
    }
    for a, b in itertools.combinations(CHOICES, 2):
        for pair in itertools.product(CHOICES[a], CHOICES[b]):
            assert ((a, pair[0]), (b, pair[1])) in baked_pairs
    assert MATRIX[0] == {name: values[0] for name, values in CHOICES.items()}  # the defaults


def test_template_repository_code_is_ruff_clean():
    """The hooks and their Jinja filters, these tests and the benchmarks follow ruff.toml, like the code they bake."""
    paths = ["hooks", "answer_filters.py", "tests", "benchmarks"]
    assert_ok(run(["ruff", "check", *paths], TEMPLATE))
    assert_ok(run(["ruff", "format", "--check", *paths], TEMPLATE))


def test_no_template_file_is_hidden_from_git():
    """The baked project's own .gitignore hides .envs/.production: a template file it
    hides is missing from every clone, and a bake from a clone fails or lacks it."""
    if not (TEMPLATE / ".git").exists():
        pytest.skip("not a git checkout")
    result = run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "{{cookiecutter.project_slug}}"], TEMPLATE
    )
    assert_ok(result)
    hidden = [line for line in result.stdout.splitlines() if "__pycache__" not in line and ".ruff_cache" not in line]
    assert hidden == [], "force-add them: git add -f " + " ".join(hidden)
