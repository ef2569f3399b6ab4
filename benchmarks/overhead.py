"""Task overhead: round trip of a near no-op task on `high`, and one pool's throughput.

    .venv/bin/python benchmarks/overhead.py [--round-trips 300] [--burst 2000]

The task is the password-reset email for a user id that does not exist: it looks
the user up, logs, and returns, so what is measured is Celery, Redis and the
worker, not the work. Round trip = delay() to result available (result backend
Redis). Throughput = a burst sent at once, drained by worker-high (4 processes).
Not part of the test suite.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent
DATABASE = "blueprint_overhead"

LOAD = """
import json, statistics, time
from {slug}.users.tasks import send_password_reset_email as task
for _ in range(20):
    task.delay(0).get(timeout=30)  # warm up every worker process
rtts = []
for _ in range({round_trips}):
    start = time.perf_counter()
    task.delay(0).get(timeout=30)
    rtts.append(time.perf_counter() - start)
start = time.perf_counter()
results = [task.delay(0) for _ in range({burst})]
for result in results:
    result.get(timeout=300)
elapsed = time.perf_counter() - start
print(json.dumps({{"rtts": rtts, "burst_seconds": elapsed}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--burst", type=int, default=2000)
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="blueprint-overhead-"))
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(workdir)))
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DATABASE}",
        "REDIS_URL": "redis://127.0.0.1:6379/11",
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "CELERY_WORKER_AUTORELOAD": "0",
        "CELERY_LOG_LEVEL": "WARNING",
        "DJANGO_LOG_LEVEL": "ERROR",
    }

    def sh(*args, **kwargs):
        return subprocess.run(args, cwd=project, env=env, check=True, text=True, capture_output=True, **kwargs)

    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DATABASE], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DATABASE], check=True)
    worker = None
    try:
        sh("python", "manage.py", "migrate", "--no-input")
        sh("python", "-m", "celery", "-A", "config.celery_app", "purge", "-f")
        worker = subprocess.Popen(["python", "-m", "config.worker", "worker-high"], cwd=project, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        time.sleep(8)
        code = LOAD.format(slug=project.name, round_trips=options.round_trips, burst=options.burst)
        result = json.loads(sh("python", "manage.py", "shell", "-c", code, timeout=900).stdout.strip().splitlines()[-1])
    finally:
        if worker:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DATABASE], check=False)
        shutil.rmtree(workdir, ignore_errors=True)

    rtts = sorted(result["rtts"])
    p50, p99 = rtts[len(rtts) // 2], rtts[min(int(len(rtts) * 0.99), len(rtts) - 1)]
    print(f"\nNear no-op task on worker-high (4 processes), {os.cpu_count()} cores, Redis broker and results\n")
    print(f"round trip (delay -> result), {len(rtts)} calls: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    print(f"throughput, burst of {options.burst}: {options.burst / result['burst_seconds']:,.0f} tasks/s")


if __name__ == "__main__":
    main()
