"""The in-memory window (samples not yet in a committed batch): SIGTERM flushes it, SIGKILL loses it.

Batching is set so that nothing closes by itself (max_age_s 1 h), so every sample is in the window until the
signal arrives; the uplink fails on purpose so that what was committed stays visible in the store, which
`vehicle-agent status` reads read-only once the agent is gone.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATA, run_cli
from tests.test_durability_crash import drive_log, start_agent
from tests.test_durability_diskfull import wait_status


def _config(tmp_path: Path) -> Path:
    log = drive_log(tmp_path / "drive.log", seconds=120)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({
        "vehicle_id": "window-car", "state_dir": str(tmp_path / "state"),
        "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")], "replay": str(log), "replay_rate": 1.0}],
        "batching": {"max_age_s": 3600, "max_samples": 10_000_000},
        "sink": {"type": "file", "fault": {"fail_rate": 1.0}, "retry_initial_s": 0.1, "retry_max_s": 0.2},
    }))
    return path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_and_the_in_memory_window(tmp_path: Path, sig: signal.Signals) -> None:
    config = _config(tmp_path)
    proc = start_agent(config, tmp_path / "agent.out")
    try:
        doc = wait_status(config, lambda d: d.get("running") and d["pending_samples"] > 500, "samples in memory")
        assert doc["store"]["batches"] == 0  # the window is only in memory
    finally:
        proc.send_signal(sig)
        rc = proc.wait(60)
    res = run_cli("status", "--config", str(config), "--json")
    assert res.returncode == 0, res.stderr
    after = json.loads(res.stdout)
    assert after["running"] is False
    human = run_cli("status", "--config", str(config)).stdout
    assert "not running" in human and "store:" in human
    if sig == signal.SIGTERM:
        assert rc == 0
        kept = after["buses"]["pt"]["samples"]
        assert kept > 500 and after["store"]["samples"] == kept  # every kept sample committed on SIGTERM
        assert after["pending_samples"] == 0
    else:
        assert rc == -signal.SIGKILL
        assert after["store"]["samples"] == 0  # what SIGKILL loses: exactly the window (see docs/durability.md)
