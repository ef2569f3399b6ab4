"""Task overhead: round trip of a near no-op task on `high`, and one pool's throughput.

    .venv/bin/python benchmarks/overhead.py [--round-trips 300] [--burst 2000] [--broker redis|rabbitmq]

The task is the password-reset email for a user id that does not exist: it looks
the user up, logs, and returns, so what is measured is Celery, Redis and the
worker, not the work. Round trip = delay() to result available (result backend
Redis; broker Redis or RabbitMQ with the template's quorum queues and publisher
confirms). Throughput = a burst sent at once, drained by worker-high (4 processes).
Not part of the test suite.
"""

import argparse
import json
import os
import signal
import time

from baked import baked_project

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
    parser.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis")
    options = parser.parse_args()

    with baked_project("blueprint_overhead", redis_db=11, broker=options.broker, DJANGO_LOG_LEVEL="ERROR") as project:
        worker = project.popen("python", "-m", "config.worker", "worker-high")
        try:
            time.sleep(8)
            code = LOAD.format(slug=project.slug, round_trips=options.round_trips, burst=options.burst)
            result = json.loads(
                project.sh("python", "manage.py", "shell", "-c", code, timeout=900).stdout.splitlines()[-1]
            )
        finally:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()

    rtts = sorted(result["rtts"])
    p50, p99 = rtts[len(rtts) // 2], rtts[min(int(len(rtts) * 0.99), len(rtts) - 1)]
    broker = "Redis" if options.broker == "redis" else "RabbitMQ (quorum queues, confirms)"
    print(f"\nNear no-op task on worker-high (4 processes), {os.cpu_count()} cores, {broker} broker, Redis results\n")
    print(f"round trip (delay -> result), {len(rtts)} calls: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    print(f"throughput, burst of {options.burst}: {options.burst / result['burst_seconds']:,.0f} tasks/s")


if __name__ == "__main__":
    main()
