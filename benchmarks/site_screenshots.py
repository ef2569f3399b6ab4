"""Screenshots of the baked site's pages, for docs/site.md: docs/img/site-*.png.

    .venv/bin/python benchmarks/site_screenshots.py

Bakes the template (project name "Acme Shop") and runs its browser tests,
tests/test_site_browser.py, with SITE_SCREENSHOTS pointing at docs/img: every
page is saved at the moment the test has checked it (1100 x 750, PNG). Needs
what those tests need: Postgres (trust auth for the postgres role), Redis and
Chromium; REDIS_URL picks the Redis (default: 127.0.0.1:6379, database 10).
Not part of the test suite.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent
IMAGES = TEMPLATE / "docs" / "img"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="site-screenshots-") as workdir:
        project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=workdir))
        env = os.environ | {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            # pytest-django creates (and drops) test_site_screenshots.
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/site_screenshots",
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/10"),
            "SITE_SCREENSHOTS": str(IMAGES),
            "CI": "1",  # a missing service fails the run instead of skipping the pages
        }
        env.pop("DJANGO_SETTINGS_MODULE", None)  # the project's pytest settings: config.settings.test
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "--create-db", "tests/test_site_browser.py"],
            cwd=project,
            env=env,
            check=False,
        )
    for image in sorted(IMAGES.glob("site-*.png")):
        print(f"{image.relative_to(TEMPLATE)}  {image.stat().st_size // 1024} KiB")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
