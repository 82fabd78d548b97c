"""The real agent on a store with a damaged batch: quarantined, counted, listed, never sent; the rest flows.

16 zero bytes are written inside one stored payload of a store file the real agent wrote (SQLite's
quick_check still says ok). The agent then drains into the file sink, and into a real mosquitto.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.uplink.mqtt import decode_message
from tests.conftest import CONFIG_DIR, run_cli
from tests.mqtt_broker import Cloud, MqttBroker
from tests.test_store_integrity import damage_payload

DBC = str(CONFIG_DIR / "dbc" / "powertrain.dbc")


def _config(tmp_path: Path, sink: dict[str, Any]) -> Path:
    cfg = {"vehicle_id": "car-q", "state_dir": str(tmp_path / "state"),
           "buses": [{"name": "powertrain", "databases": [DBC], "replay": str(CONFIG_DIR / "sample-drive.log"),
                      "replay_rate": 10}],
           "collection": {"default": {"policy": "all"}}, "batching": {"max_age_s": 0.2},
           "sink": {"retry_initial_s": 0.2, "retry_max_s": 0.5, **sink}}
    path = tmp_path / f"agent-{sink['type']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def stored_with_one_damaged(tmp_path: Path) -> tuple[dict[str, bytes], str, Path]:
    """A store the real agent filled while its sink failed; one batch's payload then damaged on disk.
    Returns the stored payloads by id, the damaged id and the store path."""
    failing = _config(tmp_path, {"type": "file", "fault": {"fail_rate": 1.0}})
    res = run_cli("run", "--config", str(failing), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    path = tmp_path / "state" / "store.db"
    db = sqlite3.connect(path)
    rows = db.execute("SELECT id, payload FROM batches ORDER BY priority DESC, seq").fetchall()
    db.close()
    assert len(rows) >= 4, "several batches are stored"
    data = path.read_bytes()
    damaged = next(bid for bid, payload in rows[1:] if data.count(bytes(payload)) == 1)
    damage_payload(path, bytes(dict(rows)[damaged]))
    assert sqlite3.connect(path).execute("PRAGMA quick_check").fetchone()[0] == "ok"
    return {bid: bytes(p) for bid, p in rows}, damaged, path


def _events(stderr: str, name: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(line) for line in stderr.splitlines() if line.startswith("{"))
            if e.get("event") == name]


def test_damaged_batch_is_quarantined_and_listed_and_the_file_sink_gets_the_rest(tmp_path: Path) -> None:
    stored, damaged, _ = stored_with_one_damaged(tmp_path)
    config = _config(tmp_path, {"type": "file"})
    res = run_cli("run", "--config", str(config), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    [event] = _events(res.stderr, "batch_quarantined")
    assert event["batch_id"] == damaged and "checksum" in event["reason"]

    outbox = {f.stem for f in (tmp_path / "state" / "outbox").glob("*.jsonl")}
    assert damaged not in outbox
    assert set(stored) - {damaged} <= outbox, "every other stored batch was delivered"
    assert len(outbox) > len(stored) - 1, "and the second run's own batches flowed too"

    status = run_cli("status", "--config", str(config))
    assert status.returncode == 0, status.stderr
    assert "quarantined, not sent (damaged on disk, or a sink cannot prepare them): 1 batches" in status.stdout
    assert f"    {damaged} normal" in status.stdout and "does not match its checksum" in status.stdout
    doc = json.loads(run_cli("status", "--config", str(config), "--json").stdout)
    assert doc["store"]["counters"]["quarantined_batches"] == 1 and doc["store"]["batches"] == 0
    assert doc["store"]["quarantine"][0]["id"] == damaged


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttBroker]:
    b = MqttBroker(tmp_path_factory.mktemp("mqtt-q"))
    b.start()
    yield b
    b.kill(signal.SIGTERM)


@pytest.mark.mqtt
def test_damaged_batch_never_reaches_the_broker(tmp_path: Path, broker: MqttBroker) -> None:
    stored, damaged, _ = stored_with_one_damaged(tmp_path)
    cloud = Cloud(broker, "fleet/car-q")
    try:
        config = _config(tmp_path, {"type": "mqtt", "mqtt": {"host": "127.0.0.1", "port": broker.port,
                                                             "topic_prefix": "fleet", "connect_timeout_s": 5}})
        res = run_cli("run", "--config", str(config), "--no-progress")
        assert res.returncode == 0, res.stderr[-3000:]
        assert "Traceback" not in res.stderr
        sent = {}
        for _, payload in cloud.telemetry():
            header, body = decode_message(payload)
            sent[header["id"]] = body
    finally:
        cloud.stop()
    assert damaged not in sent
    for bid, payload in stored.items():
        if bid != damaged:
            assert sent[bid] == payload, "every other stored batch arrived with its original bytes"
    assert len(sent) > len(stored) - 1
