"""Shared fixtures: the project's paths, a way to run the real CLI, small configs."""

from __future__ import annotations

import os
import subprocess
import sys
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
