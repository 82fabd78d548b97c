"""The README's first command: `vehicle-agent run` on its built-in defaults, on a machine with no CAN and no cloud."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, run_cli


def _outbox_rows(outbox: Path) -> list[dict]:
    rows = []
    for f in sorted(outbox.glob("*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line]
    return rows


def test_default_run_collects_all_three_buses_and_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "VEHICLE_AGENT_STATE_DIR": str(state), "VEHICLE_AGENT__batching__max_age_s": "1",
           "VEHICLE_AGENT_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        buses: set[str] = set()
        while time.monotonic() < deadline and buses != {"powertrain", "chassis", "body"}:
            time.sleep(0.5)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            if (state / "outbox").is_dir():
                buses = {r["bus"] for r in _outbox_rows(state / "outbox")}
        assert buses == {"powertrain", "chassis", "body"}
        status = run_cli("status", "--json", "--state-dir", str(state))
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert all(doc["buses"][b]["frames"] > 0 for b in buses)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    events = [json.loads(line)["event"] for line in (out + err).splitlines() if line.startswith("{")]
    assert "agent_start" in events and "agent_stopped" in events
    rows = _outbox_rows(state / "outbox")
    by_signal = {r["signal"]: r for r in rows}
    # the default policy keeps what config/agent.yaml asks for, and drops the plumbing
    assert "VehicleSpeed" in by_signal and "WheelSpeedFL" in by_signal and "EngineSpeed" in by_signal
    assert not any("Counter" in s or "Crc" in s or "Checksum" in s for s in by_signal)
    assert 0 <= by_signal["VehicleSpeed"]["value"] <= 250
    # no CAN here: the quick start simulates, says so, and marks every sample
    assert all(r["simulated"] is True for r in rows)
    assert events.count("simulated_data") == 3
    # everything collected was flushed on SIGTERM: the store is empty, nothing is left behind
    doc = json.loads(run_cli("status", "--json", "--state-dir", str(state)).stdout)
    assert doc["store"]["batches"] == 0
