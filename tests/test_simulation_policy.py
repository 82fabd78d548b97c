"""Simulated data only when asked, and marked wherever it goes (issue 14, item 1).

`interface: auto` toward a cloud sink never simulates: a missing channel waits (`missing` in status
and the reported properties, a warning). A bus that is simulated on request reaches the cloud marked
(MQTT header, IoT Hub property, batch header, outbox metadata, status). `vehicle-agent simulate` to a
SocketCAN channel that does not exist is an error.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.codec import codec_by_content
from agent.store import Store
from agent.uplink.mqtt import decode_message
from tests.conftest import CONFIG_DIR, DATA, ROOT, run_cli
from tests.mqtt_broker import Cloud, MqttBroker

USER, PASSWORD = "car-9", "another-password-for-tests"
MISSING = "nosuchcan7"  # a SocketCAN channel that exists on no test machine


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttBroker]:
    b = MqttBroker(tmp_path_factory.mktemp("mqtt-sim"), users={USER: PASSWORD, "cloud": "cloud-pass"})
    b.start()
    yield b
    b.kill(signal.SIGTERM)


def wait(predicate, timeout: float = 60, what: str = "condition", proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"agent exited {proc.returncode} while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.mqtt
def test_cloud_sink_waits_for_a_missing_channel_and_marks_the_bus_simulated_on_request(
        tmp_path: Path, broker: MqttBroker) -> None:
    cloud = Cloud(broker, "sim/car-9", username="cloud", password="cloud-pass")
    state = tmp_path / "state"
    cfg = {"vehicle_id": "car-9", "state_dir": str(state),
           "buses": [{"name": "car", "interface": "auto", "channel": MISSING,
                      "databases": [str(CONFIG_DIR / "dbc" / "powertrain.dbc")]},
                     {"name": "bench", "interface": "virtual", "channel": "sim-policy", "simulate": True,
                      "databases": [str(CONFIG_DIR / "dbc" / "body.dbc")]}],
           "batching": {"max_age_s": 0.5},
           "sink": {"type": "mqtt", "retry_initial_s": 0.2, "retry_max_s": 1.0,
                    "mqtt": {"host": "127.0.0.1", "port": broker.port, "username": USER, "topic_prefix": "sim",
                             "reported_interval_s": 0.5}}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json", "VEHICLE_AGENT_MQTT_PASSWORD": PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(path), "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        reported = wait(lambda: (r := cloud.reported()) and r.get("buses", {}).get("car", {}).get("state") == "missing"
                        and r["buses"].get("bench", {}).get("simulated") and r, what="reported buses", proc=proc)
        wait(lambda: cloud.telemetry(), what="telemetry of the simulated bus", proc=proc)
        status = run_cli("status", "--json", "--state-dir", str(state))
        text = run_cli("status", "--state-dir", str(state)).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        cloud.stop()
    assert proc.returncode == 0, err[-3000:]
    assert reported["buses"]["car"]["simulated"] is False and reported["buses"]["car"]["frames"] == 0
    doc = json.loads(status.stdout)
    assert doc["buses"]["car"]["state"] == "missing" and doc["buses"]["car"]["simulated"] is False
    assert doc["buses"]["bench"]["simulated"] is True
    assert "bus car: missing" in text and "bus bench: SIMULATED, up" in text
    events = _events(err)
    missing = [e for e in events if e["event"] == "can_interface_missing"]
    assert len(missing) == 1 and missing[0]["bus"] == "car" and missing[0]["level"] == "warning"
    assert [e["bus"] for e in events if e["event"] == "simulated_data"] == ["bench"]
    # Every batch that reached the cloud came from the bus that asked to be simulated, and says so.
    for _topic, payload in cloud.telemetry():
        header, body = decode_message(payload)
        assert header["buses"] == ["bench"] and header["simulated"] is True
        batch_header, samples = codec_by_content(header["ct"]).decode(body)
        assert batch_header["sim"] is True and {s.bus for s in samples} == {"bench"}


def test_quick_start_file_sink_marks_the_outbox_and_the_batch_header(tmp_path: Path) -> None:
    """The file sink with raw batches: `.meta.json`, the batch header and decode-batch say simulated."""
    state = tmp_path / "state"
    cfg = {"vehicle_id": "demo", "state_dir": str(state),
           "buses": [{"name": "powertrain", "interface": "auto", "channel": MISSING,
                      "databases": [str(CONFIG_DIR / "dbc" / "powertrain.dbc")]}],
           "batching": {"max_age_s": 0.5}, "sink": {"type": "file", "decoded": False}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(path), "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metas = wait(lambda: list((state / "outbox").glob("*.meta.json")), what="a batch in the outbox", proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    warning = next(e for e in _events(err) if e["event"] == "simulated_data")
    assert warning["level"] == "warning" and MISSING in warning["why"] and "file" in warning["why"]
    meta = json.loads(metas[0].read_text())
    assert meta["simulated"] is True
    res = run_cli("decode-batch", str(metas[0].with_name(f"{meta['id']}.columnar")))
    assert res.returncode == 0, res.stderr
    assert "SIMULATED" in res.stderr and res.stdout.count("\n") == meta["sample_count"]


def test_simulate_to_a_missing_socketcan_channel_is_an_error() -> None:
    dbc = str(CONFIG_DIR / "dbc" / "body.dbc")
    res = run_cli("simulate", "--dbc", dbc, "--channel", MISSING, "--duration", "0.2")
    assert res.returncode == 2
    assert f"{MISSING} does not exist" in res.stderr and "--interface virtual" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cli("simulate", "--dbc", dbc, "--channel", MISSING, "--interface", "socketcan", "--duration", "0.2")
    assert res.returncode == 2 and "--interface virtual" in res.stderr
    res = run_cli("simulate", "--dbc", dbc, "--channel", MISSING, "--interface", "virtual", "--duration", "0.2")
    assert res.returncode == 0, res.stderr


def test_a_store_written_before_the_simulated_marker_is_upgraded_not_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, priority INTEGER NOT NULL,
            created REAL NOT NULL, encoding TEXT NOT NULL, content_type TEXT NOT NULL, content_encoding TEXT NOT NULL,
            sample_count INTEGER NOT NULL, first_t REAL NOT NULL, last_t REAL NOT NULL, vehicle TEXT NOT NULL,
            buses TEXT NOT NULL, size INTEGER NOT NULL, payload BLOB NOT NULL);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);""")
    payload = codec_by_content("application/json").encode({("pt", "M", "S"): ([1.0], [1])}, vehicle="car")
    db.execute("INSERT INTO batches (id, priority, created, encoding, content_type, content_encoding, sample_count, "
               "first_t, last_t, vehicle, buses, size, payload) VALUES ('old-1', 1, ?, 'json', 'application/json', "
               "'utf-8', 1, 1.0, 1.0, 'car', 'pt', ?, ?)", (time.time(), len(payload), payload))
    db.commit()
    db.close()
    with Store(path, max_bytes=1 << 20) as store:
        (batch,) = store.next_batches(5)
        assert batch.id == "old-1" and batch.simulated is False and batch.buses == ("pt",)
        assert store.quarantined == []
    assert not list(tmp_path.glob("store.db.corrupt-*"))


def test_decoded_outbox_lines_of_a_real_bus_carry_no_marker(tmp_path: Path) -> None:
    """A replayed log is real data: nothing in the outbox says simulated."""
    cfg = {"vehicle_id": "demo", "state_dir": str(tmp_path / "state"),
           "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")], "replay": str(DATA / "edge.log")}]}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_cli("run", "--config", str(path), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for f in (tmp_path / "state" / "outbox").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert rows and not any("simulated" in r for r in rows)
    assert not any(e["event"] == "simulated_data" for e in _events(res.stderr))
