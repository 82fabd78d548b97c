"""The typed status document (issue 18, item 5): the JSON every reader names is laid out by one set of
types, read back by them without a key lost or unknown, and the sources' and sinks' own keys are the
ones the types know."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml

from agent.can.rawcan import RawCanSource
from agent.can.source import BusSource, ReplaySource
from agent.config import IoTHubConfig, MqttConfig
from agent.status.document import (
    SINK_KEYS,
    SOURCE_KEYS,
    UNREADABLE_STORE,
    AgentInfo,
    BusCounts,
    BusStatus,
    ForwarderState,
    ShapeError,
    SinkStatus,
    StatusDocument,
    StoreStatus,
)
from agent.status.text import progress_line
from agent.twin.reporter import REPORTED_SOURCE_KEYS, reported_doc
from agent.uplink.fault import FaultySink
from agent.uplink.file import FileSink
from agent.uplink.iothub import IoTHubSink
from agent.uplink.mqtt import MqttSink
from tests.conftest import CONFIG_DIR, start_logged_agent, wait_for


def small_document() -> StatusDocument:
    return StatusDocument(
        updated=1.0, agent=AgentInfo("1", 2, "h", 0.5, "car", 3), frames_per_s=10.0,
        buses={"pt": BusStatus(10.0, BusCounts(frames=5, samples=4, decode_errors=2), {"state": "up"},
                               simulated=True)},
        pending_samples=1, batches_closed=2,
        store=StoreStatus.of(UNREADABLE_STORE, path="/s/store.db", error="disk I/O error",
                             spill={"batches": 0, "bytes": 0, "dropped_batches": 1, "dropped_samples": 7}, wal={}),
        sink=SinkStatus("file", ForwarderState("connected", None, None, 0, 0.0, 0), {"removed_batches": 2}))


def test_status_document_json_and_progress_line() -> None:
    """The typed status document lays out the JSON every reader names, with `losses` derived from its
    sections; the progress line of a store that cannot be read shows `?`, not a crash (the dict
    version divided None by 1024 in the status writer)."""
    doc = small_document()
    js = doc.to_dict()
    assert list(js) == ["updated", "agent", "frames_per_s", "buses", "pending_samples", "batches_closed", "store",
                        "sink", "control", "tasks", "campaigns", "databases", "software_update", "status_file",
                        "losses"]
    assert js["buses"]["pt"] == {"frames_per_s": 10.0, "frames": 5, "error_frames": 0, "unknown_ids": 0,
                                 "unknown_distinct_ids": 0, "filtered": 0, "decode_errors": 2, "samples": 4,
                                 "refused_timestamps": 0, "refused_values": 0, "state": "up", "simulated": True}
    assert js["store"]["batches"] is None and js["store"]["error"] == "disk I/O error" and "quarantine" not in js["store"]
    assert js["sink"] == {"type": "file", "state": "connected", "last_send": None, "last_error": None,
                          "consecutive_failures": 0, "backoff_s": 0.0, "sent_batches": 0, "removed_batches": 2}
    assert js["status_file"] == {"write_failures": 0, "last_error": None}
    assert (js["losses"]["decode_error_frames"], js["losses"]["spill_dropped_samples"],
            js["losses"]["outbox_removed_batches"]) == (2, 7, 2)
    line = progress_line(doc)
    assert "samples kept         4" in line and "store depth    ? (0 KiB)" in line and line.endswith("SIMULATED")
    assert StatusDocument.from_dict(json.loads(json.dumps(js))) == doc


@pytest.mark.parametrize(("where", "change", "words"), [
    ("bus", lambda js: js["buses"]["pt"].update(evictions=1), "buses.pt: unknown evictions"),
    ("bus", lambda js: js["buses"]["pt"].pop("samples"), "buses.pt: missing samples"),
    ("store", lambda js: js["store"].pop("wal"), "store: missing wal"),
    ("sink", lambda js: js["sink"].update(state_of_link="up"), "sink: unknown state_of_link"),
    ("top", lambda js: js.update(uptime=5), "status: unknown uptime"),
    ("top", lambda js: js.pop("status_file"), "status: missing status_file"),
    ("agent", lambda js: js["agent"].update(vehicle="car"), "agent: unknown vehicle"),
    ("buses", lambda js: js.update(buses=[]), "buses: not an object"),
])
def test_a_renamed_or_missing_key_is_refused_naming_it(where: str, change, words: str) -> None:
    js = small_document().to_dict()
    change(js)
    with pytest.raises(ShapeError, match=words):
        StatusDocument.from_dict(js)


def test_the_sources_and_sinks_add_the_keys_the_types_know(tmp_path: Path) -> None:
    """A key a source or a sink adds to status (or renames) must be named in SOURCE_KEYS or SINK_KEYS,
    and what the reported properties carry of a bus's source is among them."""
    sources = [RawCanSource("a", "vcan-none"), BusSource("b", "virtual", "x"), ReplaySource("c", tmp_path / "x.log")]
    assert {k for s in sources for k in s.status()} == set(SOURCE_KEYS)
    assert set(REPORTED_SOURCE_KEYS) <= set(SOURCE_KEYS)
    sinks = [FileSink(tmp_path / "outbox"), FaultySink(FileSink(tmp_path / "o2"), fail_rate=0.5),
             MqttSink(MqttConfig(host="localhost"), vehicle="car"), IoTHubSink(IoTHubConfig())]
    assert {k for s in sinks for k in s.state()} == set(SINK_KEYS)


def test_a_running_agents_status_round_trips_through_the_typed_document(tmp_path: Path) -> None:
    """status.json of a running agent (a simulated bus, a replay with a bad line, the file sink) and of
    the stopped agent reads back into the types with no key missing or unknown, and lays out the same
    JSON; the reported properties are built from it."""
    log = tmp_path / "drive.log"
    log.write_text((CONFIG_DIR / "sample-drive.log").read_text().splitlines()[0] + "\nnot a frame\n")
    cfg = {"vehicle_id": "car-s", "state_dir": str(tmp_path / "state"),
           "buses": [{"name": "sim", "databases": [str(CONFIG_DIR / "dbc" / "powertrain.dbc")],
                      "interface": "virtual", "channel": "status-doc", "simulate": True},
                     {"name": "replay", "databases": [str(CONFIG_DIR / "dbc" / "powertrain.dbc")], "replay": str(log)}],
           "batching": {"max_age_s": 0.5}, "sink": {"type": "file"}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    status_file = tmp_path / "state" / "status.json"

    def status() -> dict | None:
        try:
            js = json.loads(status_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        sim = js["buses"].get("sim", {})
        ready = sim.get("state") == "up" and sim.get("simulator", {}).get("sent") and js["store"]["counters"].get(
            "sent_batches") and js["buses"].get("replay", {}).get("bad_lines") == 1
        return js if ready else None

    proc, lines, reader = start_logged_agent(path)
    try:
        running = wait_for(status, timeout=60, what="a status with the simulated bus up, a batch sent, the bad line")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    assert proc.returncode == 0, "".join(lines[-20:])
    stopped = json.loads(status_file.read_text())
    for js in (running, stopped):
        doc = StatusDocument.from_dict(js)
        assert doc.to_dict() == js
        assert doc.buses["sim"].simulated and doc.buses["sim"].simulator is not None
        assert doc.buses["replay"].source["bad_lines"] == 1 and doc.losses()["replay_bad_lines"] == 1
        reported = reported_doc(doc)
        assert reported["buses"]["sim"]["simulated"] is True and reported["uplink"]["type"] == "file"
        assert reported["store"]["counters"]["sent_batches"] == js["store"]["counters"]["sent_batches"] > 0
