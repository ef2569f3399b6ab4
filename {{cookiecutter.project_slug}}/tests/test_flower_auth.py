"""Flower refuses to start with credentials that let anyone in (python -m config.flower, as the Procfile runs it)."""

import os
import subprocess
import sys

import pytest

from config.flower import basic_auth_problem

from .conftest import ROOT, free_port

REFUSED = {
    "empty password": ("flower:", "the value has an empty password"),
    "blank password": ("flower:   ", "the value has an empty password"),
    "empty user": (":s3cret", "the value has an empty user"),
    "no colon": ("flower", "the value is not user:password"),
    "a colon alone": (":", "the value has an empty user"),
    "second pair without password": ("ops:s3cret,flower:", "pair 2 of 2 has an empty password"),
    "trailing comma": ("ops:s3cret,", "pair 2 of 2 is not user:password"),
    "comma in a password": ("ops:s3c,ret", "pair 2 of 2 is not user:password"),
}


def start_flower(**env: str) -> subprocess.CompletedProcess:
    environ = {name: value for name, value in os.environ.items() if not name.startswith("FLOWER_")}
    environ |= {"DJANGO_SETTINGS_MODULE": "config.settings.test", **env}
    # Should the check let it through, Flower would start, on a free local port, and time out here.
    command = [sys.executable, "-m", "config.flower", "--address=127.0.0.1", f"--port={free_port()}"]
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=20, check=False)


@pytest.mark.parametrize(("value", "reason"), REFUSED.values(), ids=REFUSED)
def test_flower_refuses_to_start_with_an_empty_or_malformed_basic_auth(value, reason):
    result = start_flower(FLOWER_BASIC_AUTH=value)

    assert result.returncode == 1
    assert f"refusing to start Flower: FLOWER_BASIC_AUTH is malformed, {reason}" in result.stderr
    password = value.partition(":")[2].strip()
    if password:
        assert password not in result.stderr  # the message never shows a password


def test_flower_refuses_to_start_without_authentication():
    result = start_flower(FLOWER_BASIC_AUTH="")

    assert result.returncode == 1
    assert "refusing to start Flower without authentication" in result.stderr


@pytest.mark.parametrize("value", ["flower:s3cret", "ops:pass:with:colons", "ops:a,flower:b", "ünïcode:pässwörd"])
def test_real_credentials_pass_the_check(value):
    assert basic_auth_problem(value) is None
