"""The periodic `summary` log line for headless operation (issue 14, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from agent.status import document as sd
from agent.summary import SummaryLog
from tests.conftest import CONFIG_DIR, run_cli


def _doc(frames: int, kept: int, stored: int, sent: int, *, evicted: int = 0, kernel_drops: int = 0,
         depth: int = 0) -> sd.StatusDocument:
    stats = {"batches": depth, "samples": 0, "bytes": depth * 100, "by_priority": {}, "oldest_pending_age_s": None,
             "counters": {"stored_batches": stored, "sent_batches": sent, "evicted_low_batches": evicted},
             "quarantine": []}
    return sd.StatusDocument(
        updated=0.0, agent=sd.AgentInfo("1", 1, "h", 0.0, "car", 0), frames_per_s=0.0,
        buses={"pt": sd.BusStatus(0.0, sd.BusCounts(frames=frames, samples=kept),
                                  {"state": "up", "kernel_drops": kernel_drops})},
        pending_samples=0, batches_closed=0,
        store=sd.StoreStatus.of(stats, path="s.db", error=None, spill={"dropped_batches": 0}, wal={}),
        sink=sd.SinkStatus("file", sd.ForwarderState("connected", None, None, 0, 0.0, 0)))


def test_summary_reports_the_differences_of_its_interval() -> None:
    now = [0.0]
    summary = SummaryLog(60, clock=lambda: now[0])
    assert summary.observe(_doc(100, 50, 1, 0)) is None  # the baseline
    now[0] = 59.0
    assert summary.observe(_doc(700, 350, 3, 2)) is None  # not yet due
    now[0] = 60.0
    line = summary.observe(_doc(6100, 3050, 10, 8, evicted=2, kernel_drops=5, depth=2))
    assert line is not None
    assert line["frames_per_s"] == 100.0 and line["samples_kept"] == 3000
    assert line["batches_stored"] == 9 and line["batches_sent"] == 8
    assert line["store_depth_batches"] == 2 and line["dropped"] == {"evicted": 2, "kernel_drops": 5}
    assert line["buses"] == {"pt": "up"} and line["sink"] == "connected" and "simulated" not in line
    now[0] = 120.0
    line = summary.observe(_doc(6100, 3050, 10, 10, evicted=2, kernel_drops=0, depth=0))
    assert line["frames_per_s"] == 0 and line["batches_sent"] == 2 and line["dropped"] == {}  # a reopened socket


def test_headless_run_logs_a_summary_line(tmp_path: Path) -> None:
    cfg = {"vehicle_id": "headless", "state_dir": str(tmp_path / "state"), "summary_interval_s": 1,
           "batching": {"max_age_s": 0.5}, "collection": {"default": {"policy": "all"}},
           "buses": [{"name": "powertrain", "databases": [str(CONFIG_DIR / "dbc" / "powertrain.dbc")],
                      "replay": str(CONFIG_DIR / "sample-drive.log"), "replay_rate": 5}]}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_cli("run", "--config", str(path), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    events = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    summaries = [e for e in events if e["event"] == "summary"]
    assert summaries, "a 3 s run with summary_interval_s: 1 logs at least one summary"
    first = summaries[0]
    assert first["level"] == "info" and first["frames_per_s"] > 0 and first["samples_kept"] > 0
    assert first["buses"] == {"powertrain": "replaying"} and first["sink"]
    assert {"batches_stored", "batches_sent", "store_depth_batches", "dropped", "errors"} <= set(first)
    kept = sum(json.loads(line) is not None for f in (tmp_path / "state" / "outbox").glob("*.jsonl")
               for line in f.read_text().splitlines())
    assert sum(s["samples_kept"] for s in summaries) <= kept
