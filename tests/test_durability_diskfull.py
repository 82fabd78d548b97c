"""The real agent on a disk that fills up: clear status, a bounded and counted memory spill, recovery.

The state directory (store, status file) lives on a 2 MiB tmpfs mounted for the test; a ballast file fills
it while the agent runs with its uplink down (so the store has to grow), then is deleted.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATA, fill_disk, run_cli
from tests.test_durability_crash import drive_log, start_agent

pytestmark = pytest.mark.durability


def wait_status(config: Path, until: Callable[[dict], bool], what: str, timeout: float = 60) -> dict:
    """Poll `vehicle-agent status --json` (what a user runs) until the condition holds."""
    end = time.monotonic() + timeout
    doc: dict = {}
    while time.monotonic() < end:
        res = run_cli("status", "--config", str(config), "--json")
        if res.returncode == 0:
            doc = json.loads(res.stdout)
            if until(doc):
                return doc
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last status: {json.dumps(doc.get('store'), indent=1)}")


def test_disk_full_spills_counts_and_recovers(small_fs: Path, tmp_path: Path) -> None:
    log = drive_log(tmp_path / "drive.log", seconds=300, hz=200)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "vehicle_id": "full-car", "state_dir": str(small_fs),
        "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")], "replay": str(log), "replay_rate": 1.0}],
        "batching": {"max_age_s": 0.2, "max_samples": 100},
        "store": {"spill_max_bytes": 8000},
        "sink": {"type": "file", "path": str(tmp_path / "outbox"), "fault": {"fail_rate": 1.0},
                 "retry_initial_s": 0.1, "retry_max_s": 0.5},
    }))
    proc = start_agent(config, tmp_path / "agent.out")
    try:
        wait_status(config, lambda d: (d["store"]["batches"] or 0) > 3, "batches in the store")
        fill_disk(small_fs / "ballast")
        doc = wait_status(config, lambda d: d["store"]["spill"]["dropped_samples"] > 0,
                          "the spill to overflow")
        assert "full" in doc["store"]["error"]
        assert 0 < doc["store"]["spill"]["bytes"] <= 8000 + 10_000  # bounded (one batch over at most)
        human = run_cli("status", "--config", str(config))
        assert "ERROR" in human.stdout and "memory spill" in human.stdout and "lost" in human.stdout
        lost = doc["store"]["spill"]["dropped_samples"]
        os.remove(small_fs / "ballast")
        doc = wait_status(config, lambda d: d["store"]["error"] is None and d["store"]["spill"]["batches"] == 0,
                          "recovery")
        assert doc["store"]["spill"]["dropped_samples"] >= lost
        stored_after = doc["store"]["counters"]["stored_batches"]
        doc = wait_status(config, lambda d: d["store"]["counters"]["stored_batches"] > stored_after + 3,
                          "new batches stored after recovery")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0, (tmp_path / "agent.out").read_text()[-3000:]
    events = [json.loads(x) for x in (tmp_path / "agent.out").read_text().splitlines() if x.startswith("{")]
    names = {e["event"] for e in events}
    assert {"store_write_failed", "spill_dropped", "store_recovered"} <= names
    doc = json.loads(run_cli("status", "--config", str(config), "--json").stdout)
    # Every kept sample is accounted for: in the store, or counted as lost in the spill (the sink was down).
    assert doc["buses"]["pt"]["samples"] == doc["store"]["samples"] + doc["store"]["spill"]["dropped_samples"]
    con = sqlite3.connect(small_fs / "store.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_the_wal_never_fills_a_small_disk(small_fs: Path, tmp_path: Path) -> None:
    """With the uplink down on a 2 MiB state partition and nothing else on it, the store keeps storing:
    SQLite's WAL (checkpointed by itself only at ~4 MiB) filled the whole partition within seconds and
    every write after that failed. It is checkpointed and truncated within its budget instead."""
    log = drive_log(tmp_path / "drive.log", seconds=300, hz=200)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "vehicle_id": "small-disk", "state_dir": str(small_fs),
        "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")], "replay": str(log), "replay_rate": 1.0}],
        "batching": {"max_age_s": 0.05, "max_samples": 100},
        "sink": {"type": "file", "path": str(tmp_path / "outbox"), "fault": {"fail_rate": 1.0},
                 "retry_initial_s": 0.1, "retry_max_s": 0.5},
    }))
    proc = start_agent(config, tmp_path / "agent.out")
    try:
        # ~16 KiB of WAL a commit: 250 commits are twice the partition
        doc = wait_status(config, lambda d: d["store"]["error"] is not None
                          or d["store"]["counters"].get("stored_batches", 0) >= 250, "250 batches stored", timeout=120)
        assert doc["store"]["error"] is None, doc["store"]
        wal = doc["store"]["wal"]
        assert wal["checkpoints"] > 0 and wal["bytes"] <= wal["limit_bytes"] + 64 * 1024  # one commit over at most
        assert wal["limit_bytes"] < 1024 * 1024  # a quarter of what the partition leaves it, not 4 MiB
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0, (tmp_path / "agent.out").read_text()[-3000:]
    events = [json.loads(x) for x in (tmp_path / "agent.out").read_text().splitlines() if x.startswith("{")]
    assert not [e for e in events if e["event"] in ("store_write_failed", "spill_dropped")]
    doc = json.loads(run_cli("status", "--config", str(config), "--json").stdout)
    assert doc["buses"]["pt"]["samples"] == doc["store"]["samples"]  # every kept sample is in the store
    con = sqlite3.connect(small_fs / "store.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
