"""Shared fixtures: the project's paths, a way to run the real CLI, small configs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
CONFIG_DIR = ROOT / "config"


def run_cli(*args: str, input: str | None = None, timeout: float = 120, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real `vehicle-agent` command as a user runs it (python -m agent)."""
    full_env = {**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json", **(env or {})}
    return subprocess.run([sys.executable, "-m", "agent", *args], input=input, capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or ROOT)


@pytest.fixture
def edge_dbc() -> Path:
    return DATA / "edge.dbc"


@pytest.fixture
def edge_log() -> Path:
    return DATA / "edge.log"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a disk that really fills up and can really be remounted read-only."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_disk(path: Path) -> None:
    """Write a ballast file until the file system says ENOSPC."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (65536, 4096, 512):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
