"""No uncounted loss: every way the agent can drop data is one counter, in status, in the reported
properties and in docs/durability.md; and in a real run every kept sample is delivered, stored or counted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from agent.can.rawcan import RawCanSource
from agent.can.source import BusSource
from agent.health import BUS_LOSSES, LOSSES
from agent.status.view import typed
from agent.twin.reporter import reported_doc
from tests.conftest import CONFIG_DIR, ROOT, run_cli

DBC = str(CONFIG_DIR / "dbc" / "powertrain.dbc")
STORE_LOSSES = ("evicted_samples", "expired_samples", "too_large_samples", "quarantined_samples",
                "spill_dropped_samples")


def run_replay(tmp_path: Path, store: dict, sink: dict, batch_bytes: int = 258048) -> tuple[Path, dict]:
    cfg = {"vehicle_id": "car-l", "state_dir": str(tmp_path / "state"),
           "buses": [{"name": "powertrain", "databases": [DBC], "replay": str(CONFIG_DIR / "sample-drive.log"),
                      "replay_rate": 10}],
           "collection": {"default": {"policy": "all"}}, "batching": {"max_age_s": 0.2, "max_bytes": batch_bytes},
           "store": store, "sink": {"retry_initial_s": 0.2, "retry_max_s": 0.5, **sink}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_cli("run", "--config", str(path), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    status = run_cli("status", "--config", str(path), "--json")
    assert status.returncode == 0, status.stderr
    return path, json.loads(status.stdout)


def kept_samples(doc: dict) -> int:
    return sum(b["samples"] for b in doc["buses"].values())


def test_every_loss_counter_is_in_status_reported_properties_and_docs(tmp_path: Path) -> None:
    _, doc = run_replay(tmp_path, {}, {"type": "file"})
    assert list(doc["losses"]) == list(LOSSES)
    assert list(reported_doc(typed(doc))["losses"]) == list(LOSSES)
    documented = set(re.findall(r"^\| `(\w+)` \|", (ROOT / "docs" / "durability.md").read_text(), re.M))
    assert set(LOSSES) <= documented, f"undocumented: {set(LOSSES) - documented}"
    assert all(v == 0 for v in doc["losses"].values()), doc["losses"]
    assert doc["store"]["counters"]["sent_samples"] == kept_samples(doc) > 0


def test_bad_input_is_counted_in_the_losses_of_status_and_reported_properties(tmp_path: Path) -> None:
    """A replayed log with a line that is no frame, a frame of a known id that is too short and a frame
    dated 10^20 s: each lands in its loss counter, summed from the bus counters that name it."""
    good = (CONFIG_DIR / "sample-drive.log").read_text().splitlines()[:200]
    short_id = good[0].split()[2].split("#")[0]
    log = tmp_path / "bad.log"
    log.write_text("\n".join([*good[:100], "this is not a frame", f"(1700000000.5) vcan0 {short_id}#01",
                               f"(100000000000000000000.0) vcan0 {good[1].split()[2]}", *good[100:]]) + "\n")
    cfg = {"vehicle_id": "car-l", "state_dir": str(tmp_path / "state"),
           "buses": [{"name": "powertrain", "databases": [DBC], "replay": str(log)}],
           "collection": {"default": {"policy": "all"}}, "sink": {"type": "file"}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_cli("run", "--config", str(path), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(run_cli("status", "--config", str(path), "--json").stdout)
    bus = doc["buses"]["powertrain"]
    for counter in BUS_LOSSES.values():  # the bus counters the losses sum exist under these names
        assert counter in bus or counter in LIVE_SOURCE_LOSSES, counter
    losses = doc["losses"]
    assert (losses["replay_bad_lines"], losses["decode_error_frames"], losses["refused_timestamp_frames"]) == (1, 1, 1)
    assert reported_doc(typed(doc))["losses"] == losses
    assert "replay_bad_lines 1" in run_cli("status", "--config", str(path)).stdout


LIVE_SOURCE_LOSSES = ("kernel_drops", "backlog_drops", "unreadable_frames")  # a replay has no receive queue


def test_the_live_sources_report_the_drops_the_losses_sum() -> None:
    for source in (RawCanSource("b", "vcan-none"), BusSource("b", "virtual", "none")):
        assert set(LIVE_SOURCE_LOSSES) <= set(source.status()), source


def test_store_smaller_than_a_batch_is_refused_before_anything_is_lost(tmp_path: Path) -> None:
    """`store.max_bytes` below a batch would lose every batch: the config is refused at start with a clear
    error (a batch that still arrives too large is counted by the store: test_store_integrity.py)."""
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"buses": [{"name": "powertrain", "databases": [DBC]}],
                                    "state_dir": str(tmp_path / "state"), "store": {"max_bytes": 64}}))
    res = run_cli("run", "--config", str(path), "--no-progress")
    assert res.returncode == 2 and "store.max_bytes (64) must hold at least" in res.stderr
    assert not (tmp_path / "state" / "store.db").exists()


@pytest.mark.parametrize("store", [{"max_bytes": 5000}, {"max_bytes": 10**6, "max_batches": 4}],
                         ids=["bytes", "batches"])
def test_every_kept_sample_is_sent_stored_or_counted(tmp_path: Path, store: dict) -> None:
    """A sink that fails most of the time and a store too small for the drive: samples kept by the collector
    = sent + still stored + every store loss counter."""
    _, doc = run_replay(tmp_path, store, {"type": "file", "fault": {"fail_rate": 0.8, "seed": 3}}, batch_bytes=1100)
    c, losses = doc["store"]["counters"], doc["losses"]
    assert losses["evicted_samples"] > 0, "the store was too small: batches were evicted"
    accounted = c.get("sent_samples", 0) + doc["store"]["samples"] + sum(losses[k] for k in STORE_LOSSES)
    assert accounted == kept_samples(doc) - losses["refused_values"]
