"""The status file on a full disk, and a status file that cannot be written: `vehicle-agent status`
keeps a whole document, and every failed write is counted and logged, never swallowed."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.health import read_status, write_status
from agent.twin.local import call_method, control_dir, read_reported
from tests.conftest import DATA, ROOT, fill_disk, wait_for

pytestmark = pytest.mark.durability


def _doc(pad: int, error: str | None = None) -> dict:
    return {"updated": 1.0, "store": {"error": error}, "tasks": {f"task{i}": "x" * 50 for i in range(pad // 60)}}


def test_a_status_of_several_pages_is_rewritten_on_a_full_disk_or_the_old_one_kept(small_fs: Path) -> None:
    write_status(small_fs, _doc(7000))
    fill_disk(small_fs / "ballast")
    # On a full disk the document grows (the store's error, the spill) past the pages it had.
    grown = _doc(9000, error="database or disk is full")
    write_status(small_fs, grown)
    assert read_status(small_fs) == grown
    # One that does not fit at all is refused as a full disk; the previous status stays whole.
    with pytest.raises(OSError) as refused:
        write_status(small_fs, _doc(60_000))
    assert refused.value.errno == errno.ENOSPC and "previous status is kept" in str(refused.value)
    assert read_status(small_fs) == grown
    assert sorted(p.name for p in small_fs.iterdir()) == ["ballast", "status.json"]  # no temporary file left
    os.remove(small_fs / "ballast")
    write_status(small_fs, _doc(60_000))
    assert read_status(small_fs) == _doc(60_000)


def test_a_status_file_that_cannot_be_written_is_counted_reported_and_logged_at_the_stop(tmp_path: Path) -> None:
    state = tmp_path / "s"  # short: a unix socket path has at most 107 bytes
    (state / "status.json").mkdir(parents=True)  # whatever the cause, the write fails
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "vehicle_id": "car", "state_dir": str(state),
        "buses": [{"name": "pt", "interface": "virtual", "channel": "status-file", "simulate": True,
                   "databases": [str(DATA / "edge.dbc")]}]}))
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--no-progress"], cwd=ROOT,
                            env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (control_dir(state) / "agent.sock").exists(), 60, what="the control socket")
        failures = wait_for(lambda: (call_method(state, "get_status")[1].get("status_file") or {}).get("write_failures"),
                            30, what="status writes counted")
        assert failures >= 1
        reported = wait_for(lambda: read_reported(state).get("status_file"), 30, what="reported status_file")
        assert reported["write_failures"] >= 1 and "IsADirectoryError" in reported["last_error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    events = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    failed = [e for e in events if e["event"] == "status_write_failed"]
    assert failed[0]["when"] == "running" and failed[-1]["when"] == "stop"  # once while running, and at the stop
    assert len(failed) == 2 and failed[-1]["failures"] > failures
