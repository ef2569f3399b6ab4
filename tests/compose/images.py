"""Make the images a compose file names exist locally: the official ones, or labelled stand-ins.

    python -m tests.compose.images postgres:17 redis:7.4 python:3.12-slim-bookworm

``compose_images`` lists what a baked project's compose files need: the images their
services run, and the base images of the Dockerfiles they build.

For each image: if it is already here and is not a stand-in, use it. Otherwise try
``docker pull``; a user with Docker Hub always gets the official image this way. Only
when the pull fails (no registry reachable, as on our CI machines) is the stand-in from
``standins/`` built from Debian packages and tagged with the official name, so the
compose files are tested unchanged. See standins/README.md.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
STANDINS = HERE / "standins"
BASE = "blueprint-stand-in/debian:bookworm"
LABEL = "org.blueprint.stand-in"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageError(RuntimeError):
    """An image can neither be pulled nor built here: the message says what to do."""


def docker(*args: str, timeout: float = 1800, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and result.returncode != 0:
        raise ImageError(f"docker {' '.join(args[:3])} ... failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def stand_in_label(image: str) -> str | None:
    """The stand-in label of a local image, "" for an official one, None when it is absent."""
    result = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', image, check=False)
    if result.returncode != 0:
        return None
    value = result.stdout.strip()
    return "" if value in ("", "<no value>") else value


def pull(image: str) -> bool:
    try:
        return docker("pull", "--quiet", image, timeout=600, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def apt_mirror() -> str:
    """The Debian mirror apt already uses on this machine."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        match = re.search(r"^URIs:\s*(\S+)", Path(path).read_text(), re.MULTILINE)
        if match and "security" not in match.group(1):
            return match.group(1)
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        match = re.search(r"^deb\s+(\S+)\s+bookworm\s", sources.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def build_base() -> None:
    if stand_in_label(BASE) is not None:
        return
    if not shutil.which("debootstrap"):
        raise ImageError(
            "no registry reachable and debootstrap is missing to build stand-in images: apt install debootstrap"
        )
    with tempfile.TemporaryDirectory(prefix="stand-in-root-") as root:
        # The directory becomes the image's "/": mode 0755 like any root, not the 0700 of
        # a temporary directory, which would let no user but root run anything in it.
        Path(root).chmod(0o755)
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", root, apt_mirror()],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ImageError(f"debootstrap of the stand-in base failed (run as root?):\n{result.stdout[-2000:]}")
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        docker("import", "--change", f"LABEL {LABEL}=debian:bookworm", "-", BASE, stdin=tar.stdout)
        tar.wait()


def pyenv_python(version: str) -> Path:
    """This machine's pyenv build of CPython ``version`` (e.g. 3.12)."""
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False).stdout.strip()
    candidates = sorted(Path(root or Path.home() / ".pyenv").glob(f"versions/{version}.*"))
    if not candidates:
        raise ImageError(f"no registry reachable and no local CPython {version} build (pyenv install {version})")
    return candidates[-1]


def build_stand_in(image: str) -> None:
    repository, _, tag = image.partition(":")
    if not (STANDINS / repository / "Dockerfile").exists():
        raise ImageError(f"{image} cannot be pulled and there is no stand-in for it in {STANDINS}")
    build_base()
    with tempfile.TemporaryDirectory(prefix="stand-in-context-") as context:
        shutil.copytree(STANDINS / repository, Path(context) / repository)
        if repository == "python":
            prefix = pyenv_python(tag.split("-")[0])
            # An official slim image has no test suite and no pyenv site hooks.
            shutil.copytree(
                prefix,
                Path(context) / "python",
                symlinks=True,
                ignore=shutil.ignore_patterns("test", "__pycache__", "*.pth", "idlelib", "tkinter"),
                dirs_exist_ok=True,
            )
            for script in (Path(context) / "python" / "bin").iterdir():
                if script.is_file() and not script.is_symlink() and script.read_bytes()[:2] == b"#!":
                    text = script.read_text(errors="surrogateescape")
                    script.write_text(text.replace(str(prefix), "/usr/local"), errors="surrogateescape")
            shutil.copy(CA_BUNDLE, Path(context) / "ca-certificates.crt")
        docker(
            "build", "--quiet", "--file", str(Path(context) / repository / "Dockerfile"), "--build-arg", f"OFFICIAL={image}",
            "--tag", image, context,
        )  # fmt: skip


def base_images(dockerfile: str) -> list[str]:
    """The images a Dockerfile's FROM lines name (not its own stages), global ARG defaults filled in."""
    head = re.split(r"^FROM\s", dockerfile, maxsplit=1, flags=re.MULTILINE)[0]
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", head, re.MULTILINE))
    stages, found = set(), []
    for image, stage in re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.MULTILINE | re.IGNORECASE):
        image = re.sub(r"\$\{?(\w+)\}?", lambda match: args.get(match.group(1), match.group(0)), image)
        if image not in stages and image != "scratch" and image not in found:
            found.append(image)
        stages.add(stage)
    return found


def compose_images(path: Path, files: list[str]) -> list[str]:
    """What the compose files in ``path`` need locally: the images their services run, and
    the base images of the Dockerfiles they build."""
    wanted = []
    for name in files:
        for service in yaml.safe_load((path / name).read_text())["services"].values():
            build = service.get("build")
            if build is None:
                needed = [service["image"]]
            else:
                build = {"context": build} if isinstance(build, str) else build
                dockerfile = path / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
                needed = base_images(dockerfile.read_text())
            wanted += [image for image in needed if image not in wanted]
    return wanted


def ensure(image: str) -> str:
    """Make ``image`` available locally; return "official", "pulled" or "stand-in"."""
    label = stand_in_label(image)
    if label == "":
        return "official"
    if pull(image):
        return "pulled"
    if label is None:
        build_stand_in(image)
    return "stand-in"


def main(images: list[str]) -> int:
    for image in images:
        try:
            print(f"{image}: {ensure(image)}")
        except ImageError as error:
            print(f"{image}: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
