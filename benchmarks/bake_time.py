"""Print how long baking the template takes (no network, no Docker, no prompts).

.venv/bin/python benchmarks/bake_time.py [runs]
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent


def main(runs: int = 10) -> None:
    timings = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as output:
            start = time.perf_counter()
            cookiecutter(str(TEMPLATE), no_input=True, output_dir=output)
            timings.append(time.perf_counter() - start)
    print(
        f"bake time over {runs} runs: median {statistics.median(timings) * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
