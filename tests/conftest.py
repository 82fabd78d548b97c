"""Shared fixtures: the project's paths, a way to run the real CLI, small configs; the CI skip policy."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
CONFIG_DIR = ROOT / "config"

ALLOW_SKIPS_VAR = "VEHICLE_AGENT_ALLOW_SKIPS"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _allowed_skips() -> list[str]:
    """Node ids (or their prefixes: a file, a file::test) whose skip CI accepts, comma or space separated."""
    return [s for s in os.environ.get(ALLOW_SKIPS_VAR, "").replace(",", " ").split() if s]


def _is_allowed(nodeid: str, allowed: list[str]) -> bool:
    """A test is allowed by its node id, its file, its class, or its id without parameters."""
    return any(nodeid == a or nodeid.startswith((a + "::", a + "[")) for a in allowed)


_allowed_skipped: list[tuple[str, str]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under CI=true a skipped test fails, unless $VEHICLE_AGENT_ALLOW_SKIPS names it.

    A durability test that skips because tmpfs cannot be mounted, a packaging test without
    systemd-analyze or a vcan test without SocketCAN would otherwise turn CI green while testing
    nothing. Expected failures (xfail) are not skips and are left alone.
    """
    outcome = yield
    report = outcome.get_result()
    if not (_in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if _is_allowed(item.nodeid, _allowed_skips()):
        _allowed_skipped.append((item.nodeid, reason))
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, which is a failure: {reason}\n"
                       f"Install what the test needs (.ci/run), or allow this skip explicitly: "
                       f"{ALLOW_SKIPS_VAR}='{item.nodeid}'")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The skips CI allowed, loudly: they are tests that did not run."""
    if not (_in_ci() and _allowed_skipped):
        return
    tr = terminalreporter
    tr.section(f"ALLOWED SKIPS ({ALLOW_SKIPS_VAR}): these tests did NOT run", sep="!", red=True, bold=True)
    for nodeid, reason in _allowed_skipped:
        tr.line(f"NOT RUN: {nodeid}: {reason}", red=True, bold=True)


def run_cli(*args: str, input: str | None = None, timeout: float = 120, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real `vehicle-agent` command as a user runs it (python -m agent)."""
    full_env = {**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json", **(env or {})}
    return subprocess.run([sys.executable, "-m", "agent", *args], input=input, capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or ROOT)


def start_logged_agent(config: Path, env: dict[str, str] | None = None
                       ) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    """`vehicle-agent run --config` as its own process (`env` added to the environment); its JSON log
    lines are collected into the returned list as they are written by the returned reader thread
    (join it after the process ended to have every line), for tests that wait on log events."""
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--no-progress"], cwd=ROOT,
                            env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json", **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    return proc, lines, reader


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll until predicate() is truthy and return it (generous timeouts: the machine is shared)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def until(predicate: Callable[[], Any], timeout: float = 40, what: str = "condition") -> Any:
    """`wait_for` for an agent running in the test's own loop: polls without blocking it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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
