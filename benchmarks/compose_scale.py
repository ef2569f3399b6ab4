"""Scale the export pool out across containers: six exports on 1 and on 3 worker-export containers.

    .venv/bin/python benchmarks/compose_scale.py [--rows 1000000] [--exports 6]

Bakes a project, starts its production stack (docker-compose.production.yml, the
images built as in tests/compose, stand-ins where no registry answers), seeds one
user's transactions, then sends the exports at once and reports the wall time from
the first send to the last result, with 1 and then 3 export containers
(`docker compose up --scale worker-export=N`). Prints a Markdown table.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from baked import bake  # noqa: E402

from tests.compose import images  # noqa: E402
from tests.compose.stack import Stack, free_port  # noqa: E402

FILES = ["docker-compose.production.yml"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="transactions per export")
    parser.add_argument("--exports", type=int, default=6)
    options = parser.parse_args()

    stack = Stack(bake("compose-scale", project_name="Scale Bench"), FILES, {"PORT": str(free_port())})
    for image in images.compose_images(stack.path, FILES):
        images.ensure(image)
    rows = []
    try:
        stack.up("--build")
        stack.exec("django", "python", "manage.py", "seed_demo_data", "--transactions", str(options.rows),
                   "--orders", "0", timeout=1800)  # fmt: skip
        for replicas in (1, 3):
            stack.up("--scale", f"worker-export={replicas}")
            stack.action("exports-parallel", count=1, timeout=1800)  # warm-up: connections, imports
            result = stack.action("exports-parallel", count=options.exports, timeout=1800)
            workers = {run["worker"] for run in result["runs"]}
            rows.append((replicas, len(workers), result["seconds"]))
            print(f"{replicas} container(s): {result['seconds']:.1f} s, ran on {len(workers)}", file=sys.stderr)
    finally:
        stack.down()
    print(f"| export containers | containers used | {options.exports} x {options.rows:,} rows, wall time | speed-up |")
    print("| ---: | ---: | ---: | ---: |")
    for replicas, used, seconds in rows:
        print(f"| {replicas} | {used} | {seconds:.1f} s | {rows[0][2] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
