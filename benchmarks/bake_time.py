"""Print how long baking the template takes (no network, no Docker, no prompts).

.venv/bin/python benchmarks/bake_time.py [runs]

Two kinds of figure, because a user sees the second:

- in process: ``cookiecutter()`` called from an interpreter that has already imported
  it (rendering, both hooks, writing the files);
- the command: wall time of ``cookiecutter --no-input -o DIR TEMPLATE`` as a user
  types it, interpreter start and imports included. Three states: "first run", with
  no bytecode at all (``PYTHONPYCACHEPREFIX`` pointing at a new directory, so every
  module of cookiecutter, Jinja2 and the hooks' imports is compiled from source, as
  after ``uv tool install``, which writes no bytecode); "cold", with the bytecode pip
  wrote at install time but the page cache dropped first (when we are root and the
  kernel allows it); "warm", every run after that.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent
COMMAND = Path(sys.executable).parent / "cookiecutter"


def in_process(runs: int) -> list[float]:
    timings = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as output:
            start = time.perf_counter()
            cookiecutter(str(TEMPLATE), no_input=True, output_dir=output)
            timings.append(time.perf_counter() - start)
    return timings


def drop_page_cache() -> bool:
    """Whether the kernel dropped its page cache (root only, and not in every container)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def command(pycache: str | None = None) -> float:
    with tempfile.TemporaryDirectory() as output:
        start = time.perf_counter()
        subprocess.run(
            [str(COMMAND), "--no-input", "-o", output, str(TEMPLATE)],
            env=os.environ | ({"PYTHONPYCACHEPREFIX": pycache} if pycache else {}),
            stdout=subprocess.DEVNULL,
            check=True,
        )
        return time.perf_counter() - start


def summary(timings: list[float]) -> str:
    return f"median {statistics.median(timings) * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms"


def main(runs: int = 10) -> None:
    print(f"in process, {runs} bakes: {summary(in_process(runs))}")
    with tempfile.TemporaryDirectory() as pycache:
        first = command(pycache)
    dropped = drop_page_cache()
    cold = command()
    warm = [command() for _ in range(runs)]
    print(f"`cookiecutter --no-input`, first run (no bytecode yet): {first * 1000:.0f} ms")
    state = "page cache dropped" if dropped else "page cache NOT dropped: not allowed here"
    print(f"`cookiecutter --no-input`, cold ({state}): {cold * 1000:.0f} ms")
    print(f"`cookiecutter --no-input`, warm, {runs} runs: {summary(warm)}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
