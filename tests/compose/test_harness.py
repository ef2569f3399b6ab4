"""The compose suite's own failures are one clear line saying what to do, not a stack trace."""

import socket

import pytest

from . import images
from .conftest import bake
from .stack import ComposeError, Stack, docker_problem


def test_a_daemon_that_is_not_running_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    problem = docker_problem()
    assert problem is not None and problem.startswith("the Docker daemon is not running")
    assert "start it" in problem


def test_a_published_port_in_use_is_named_before_up(docker_ready, tmp_path_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = Stack(bake(tmp_path_factory), ["docker-compose.yml"], {"PORT": str(port)})
        with pytest.raises(ComposeError, match=rf"^port {port} on this machine is already in use: .*PORT"):
            stack.up()


def test_an_image_that_can_be_neither_pulled_nor_built_is_named(docker_ready):
    with pytest.raises(images.ImageError, match="cannot be pulled and there is no stand-in"):
        images.ensure("blueprint-no-such-image:1")
