"""Supervision of the real agent process: a task that raises is restarted and counted, a wedged task stops
the systemd watchdog pings (a real AF_UNIX notify socket), SIGTERM during a failing sink exits cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.health import read_status
from tests.conftest import ROOT, run_cli


def _config(tmp_path: Path, channel: str, fault: dict[str, Any]) -> Path:
    cfg = {"vehicle_id": "unit", "state_dir": str(tmp_path / "state"),
           "buses": [{"name": "pt", "interface": "virtual", "channel": channel, "simulate": True,
                      "databases": [str(ROOT / "config" / "dbc" / "powertrain.dbc")]}],
           "batching": {"max_age_s": 0.3},
           "sink": {"type": "file", "path": "outbox", "retry_initial_s": 0.2, "retry_max_s": 0.5, "fault": fault}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextmanager
def agent_process(config: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--no-progress"],
                            cwd=ROOT, env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json", **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def wait_status(state_dir: Path, proc: subprocess.Popen, predicate: Callable[[dict], bool],
                what: str, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    doc: dict | None = None
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
        try:
            doc = read_status(state_dir)
            if predicate(doc):
                return doc
        except (FileNotFoundError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last status: {doc}")


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr.replace('"exception": "Traceback', ""), stderr[-3000:]
    return stderr


def events(stderr: str, name: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(line) for line in stderr.splitlines() if line.startswith("{"))
            if e.get("event") == name]


def test_a_task_that_raises_is_logged_counted_and_restarted(tmp_path: Path) -> None:
    """The file sink raises an unexpected error on its first two sends (as a bug would): the forwarder
    task is restarted each time, status counts it, and then every batch is delivered."""
    config = _config(tmp_path, "sup-crash", {"crash_first": 2})
    state = tmp_path / "state"
    with agent_process(config) as proc:
        doc = wait_status(state, proc, lambda d: d["tasks"]["forwarder"]["restarts"] == 2
                          and d["sink"]["sent_batches"] >= 3, "two restarts, then sends")
        text = run_cli("status", "--config", str(config)).stdout
        stderr = stop(proc)
    forwarder = doc["tasks"]["forwarder"]
    assert forwarder["state"] == "running"
    assert forwarder["last_error"] == "RuntimeError: injected crash (sink.fault.crash_first)"
    assert {"source:pt", "simulator:pt", "housekeeping", "status"} <= set(doc["tasks"])
    assert "forwarder running (restarted 2x, last error: RuntimeError: injected crash" in text
    crashes = events(stderr, "task_crashed")
    assert [c["task"] for c in crashes] == ["forwarder", "forwarder"], "each crash is logged once"
    assert all("Traceback" in c["exception"] and "injected crash" in c["exception"] for c in crashes)
    assert doc["store"]["counters"].get("quarantined_batches", 0) == 0, "two failures do not quarantine"


def test_a_wedged_task_stops_the_watchdog_pings(tmp_path: Path) -> None:
    """The sink never acknowledges (an ack delay of an hour): the forwarder makes no progress, and after
    its stall limit the agent stops feeding systemd's watchdog, which would then restart it."""
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.settimeout(0.2)
    got: list[tuple[float, str]] = []
    done = threading.Event()

    def listen() -> None:  # read everything, as systemd does
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                got.append((time.monotonic(), server.recv(4096).decode()))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    config = _config(tmp_path, "sup-wedge", {"ack_delay_ms": 3_600_000})
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}  # pings every 0.5 s
    try:
        with agent_process(config, env) as proc:
            wait_status(tmp_path / "state", proc, lambda d: d["store"]["batches"] >= 1
                        and d["sink"]["sent_batches"] == 0, "a batch waiting in a send that never returns")
            doc = wait_status(tmp_path / "state", proc, lambda d: d["tasks"]["forwarder"]["since_progress_s"]
                              > d["tasks"]["forwarder"]["stall_s"] + 1, "the forwarder past its stall limit")
            stalled_at = time.monotonic()
            wait_status(tmp_path / "state", proc, lambda d: time.monotonic() > stalled_at + 2.5, "2.5 s more of a running agent (5 ping intervals)")
            stderr = stop(proc)
    finally:
        done.set()
        listener.join(5)
        server.close()
    pings = [t for t, m in got if "WATCHDOG=1" in m]
    assert got[0][1].startswith("READY=1") and len(pings) >= 2, got
    assert not [t for t in pings if stalled_at <= t <= stalled_at + 2.5], "no ping while a task is wedged"
    assert doc["tasks"]["housekeeping"]["state"] == "running"
    [withheld] = events(stderr, "watchdog_withheld")
    assert list(withheld["stalled_s"]) == ["forwarder"]


@pytest.mark.parametrize("fault", [{"fail_rate": 1.0}, {"crash_first": 1000}], ids=["failing", "raising"])
def test_sigterm_during_a_failing_sink_exits_cleanly(tmp_path: Path, fault: dict[str, Any]) -> None:
    config = _config(tmp_path, f"sup-term-{len(fault)}-{next(iter(fault))}", fault)
    with agent_process(config) as proc:
        wait_status(tmp_path / "state", proc,
                    lambda d: d["sink"]["consecutive_failures"] >= 2 or d["tasks"]["forwarder"]["restarts"] >= 2,
                    "a sink failing again and again")
        stderr = stop(proc)
    assert events(stderr, "agent_stopped"), "the shutdown ran to its end"
