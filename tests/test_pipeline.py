"""The whole path on python-can's virtual bus and on replay: frames in, decoded samples in the outbox."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import can
import cantools
import pytest
import yaml

from agent.app import Agent
from agent.can.logformats import format_candump
from agent.can.source import ReplaySource
from agent.config import load_config
from tests.conftest import DATA, run_cli, until


def _outbox_samples(outbox: Path) -> list[dict]:
    """Every sample of the outbox in time order. Frames sent in one burst share a time, and the batches
    cut from one drain are made in the same millisecond (their ids then order at random), so batches
    are taken in the order of their samples' times, and samples of one time keep that order."""
    batches = [[json.loads(x) for x in f.read_text().splitlines()] for f in outbox.glob("*.jsonl")]
    batches.sort(key=lambda rows: (min(r["t"] for r in rows), max(r["t"] for r in rows)) if rows else (0, 0))
    return sorted((r for rows in batches for r in rows), key=lambda r: r["t"])


def _config(tmp_path: Path, bus: dict, **extra) -> Path:
    data = {"vehicle_id": "test-car", "state_dir": str(tmp_path / "state"),
            "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")], **bus}],
            "batching": {"max_age_s": 0.5, "max_samples": 50},
            **extra}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_virtual_bus_end_to_end(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, {"interface": "virtual", "channel": "e2e-virtual"}, collection={
        "default": {"policy": "all"},
        "signals": [{"match": "Torque", "policy": "exclude"}, {"match": "CoolantTemp", "policy": "on_change"}]}))
    db = cantools.database.load_file(DATA / "edge.dbc")
    eng = db.get_message_by_name("EngineData")
    agent = Agent(cfg)
    task = asyncio.create_task(agent.run())
    sender = can.Bus(interface="virtual", channel="e2e-virtual")
    try:
        await until(lambda: agent.status()["buses"].get("pt", {}).get("state") == "up", what="the bus open")
        for i in range(120):
            sender.send(can.Message(arbitration_id=eng.frame_id, is_extended_id=False, data=eng.encode(
                {"EngineSpeed": 1000 + i * 2.25, "CoolantTemp": 80 + i // 40, "Torque": -10.5, "Gear": 3})))
            if i % 20 == 0:
                await asyncio.sleep(0.03)
        sender.send(can.Message(arbitration_id=0x7EE, is_extended_id=False, data=b"\x01"))
        await until(lambda: agent.status()["buses"]["pt"]["frames"] >= 121, what="every frame read")
    finally:
        sender.shutdown()
        agent.stop.set()
        await asyncio.wait_for(task, 30)
    rows = _outbox_samples(tmp_path / "state" / "outbox")
    speeds = [r["value"] for r in rows if r["signal"] == "EngineSpeed"]
    assert speeds == [1000 + i * 2.25 for i in range(120)]
    assert [r["value"] for r in rows if r["signal"] == "CoolantTemp"] == [80, 81, 82]
    assert not [r for r in rows if r["signal"] == "Torque"]
    assert {r["bus"] for r in rows} == {"pt"} and {r["message"] for r in rows} == {"EngineData"}
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["buses"]["pt"]["frames"] == 121 and status["buses"]["pt"]["unknown_ids"] == 1
    assert status["store"]["batches"] == 0  # everything acknowledged by the sink and deleted
    assert status["store"]["counters"]["sent_samples"] == len(rows)


def _replay_log(tmp_path: Path, n: int) -> Path:
    db = cantools.database.load_file(DATA / "edge.dbc")
    eng, mux = db.get_message_by_name("EngineData"), db.get_message_by_name("MuxMsg")
    lines = []
    for i in range(n):
        t = 1700000000 + i * 0.01
        lines.append(format_candump(t, "vcan0", eng.frame_id, eng.encode(
            {"EngineSpeed": 800 + i, "CoolantTemp": 90, "Torque": i % 7 - 3, "Gear": 3})))
        lines.append(format_candump(t + 0.001, "vcan0", mux.frame_id, mux.encode(
            {"Page": 0, "TirePressureFL": 30.5} if i % 2 == 0 else
            {"Page": 1, "TirePressureFR": 31.0})))
    lines.insert(5, "garbage line")
    path = tmp_path / "drive.log"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replay_run_to_completion_via_cli(tmp_path: Path) -> None:
    """`vehicle-agent run` on a replayed log exits by itself when the log ends, with every sample delivered."""
    log = _replay_log(tmp_path, 1000)
    cfg = _config(tmp_path, {"replay": str(log)}, collection={"default": {"policy": "all"}},
                  encoding={"format": "columnar"})
    res = run_cli("run", "--config", str(cfg), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _outbox_samples(tmp_path / "state" / "outbox")
    speeds = [r for r in rows if r["signal"] == "EngineSpeed"]
    assert [r["value"] for r in speeds] == [800 + i for i in range(1000)]
    assert speeds[0]["t"] == pytest.approx(1700000000.0, abs=0.001)
    fl = [r["value"] for r in rows if r["signal"] == "TirePressureFL"]
    assert fl == [30.5] * 500  # multiplexed: only on page 0
    events = [json.loads(x) for x in res.stderr.splitlines() if x.startswith("{")]
    assert any(e["event"] == "replay_bad_line" and e["line"] == 6 for e in events)
    assert any(e["event"] == "agent_stopped" for e in events)
    st = run_cli("status", "--config", str(cfg), "--json")
    doc = json.loads(st.stdout)
    assert doc["buses"]["pt"]["frames"] == 2000 and doc["store"]["batches"] == 0


def test_json_encoding_and_raw_outbox(tmp_path: Path) -> None:
    log = _replay_log(tmp_path, 100)
    cfg = _config(tmp_path, {"replay": str(log)}, encoding={"format": "json"},
                  sink={"type": "file", "decoded": False})
    res = run_cli("run", "--config", str(cfg))
    assert res.returncode == 0, res.stderr[-2000:]
    outbox = tmp_path / "state" / "outbox"
    metas = [json.loads(p.read_text()) for p in outbox.glob("*.meta.json")]
    assert metas and all(m["content_type"] == "application/json" for m in metas)
    rows = []
    for m in metas:
        res = run_cli("decode-batch", str(outbox / f"{m['id']}.json"))
        assert res.returncode == 0, res.stderr
        rows += [json.loads(x) for x in res.stdout.splitlines()]
    assert len(rows) == sum(m["sample_count"] for m in metas)
    speeds = sorted((r["t"], r["value"]) for r in rows if r["signal"] == "EngineSpeed")
    assert [v for _, v in speeds] == [800 + i for i in range(100)]
    assert speeds[0][0] == pytest.approx(1700000000.0, abs=0.001)
    assert sorted(r["value"] for r in rows if r["signal"] == "Torque") == sorted(i % 7 - 3 for i in range(100))
    assert [r["value"] for r in rows if r["signal"] == "TirePressureFR"] == [31.0] * 50


async def test_a_paced_replay_behind_its_schedule_hands_over_bounded_chunks(tmp_path: Path) -> None:
    """A replay at real time of a log busier than the CPU takes (here 5,000 frames in one instant)
    gives its frames in chunks as they are read: it held them in one list until it caught up, memory
    growing with the log (the production soak's agent under load)."""
    lines = [format_candump(1700000000 + i * 1e-6, "vcan0", 0x100 + i % 7, bytes([i % 256] * 8)) for i in range(5000)]
    log = tmp_path / "busy.log"
    log.write_text("\n".join(lines) + "\n")
    got: list[list] = []
    async for frames in ReplaySource("pt", log, rate=1.0, chunk=500).frames(asyncio.Event()):
        got.append(frames)
    assert max(map(len, got)) <= 500 and len(got) >= 10
    assert [(f.id, f.data[0]) for chunk in got for f in chunk] == [(0x100 + i % 7, i % 256) for i in range(5000)]


def test_invalid_config_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"buses": []}))
    res = run_cli("run", "--config", str(path))
    assert res.returncode == 2
    assert "buses: List should have at least 1 item" in res.stderr


def test_max_samples_is_a_hard_cap_on_a_fast_replay(tmp_path: Path) -> None:
    """A fast replay hands the collector drains of 2,000 frames (12,000 samples here) between two
    counts: every batch still holds at most batching.max_samples, and every sample arrives once."""
    log = _replay_log(tmp_path, 3000)
    cfg = _config(tmp_path, {"replay": str(log)}, collection={"default": {"policy": "all"}},
                  batching={"max_samples": 137, "max_age_s": 3600})
    res = run_cli("run", "--config", str(cfg), timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    outbox = tmp_path / "state" / "outbox"
    batches = {f.name: f.read_text().splitlines() for f in outbox.glob("*.jsonl")}
    sizes = sorted(len(rows) for rows in batches.values())
    assert sizes[-1] == 137 and sizes[-2] == 137  # closed at the cap, not at the drain
    assert sum(1 for n in sizes if n < 137) <= 1  # only what the end of the log flushed
    rows = _outbox_samples(outbox)
    assert [r["value"] for r in rows if r["signal"] == "EngineSpeed"] == [800 + i for i in range(3000)]
    doc = json.loads(run_cli("status", "--config", str(cfg), "--json").stdout)
    assert len(rows) == sum(sizes) == doc["buses"]["pt"]["samples"] == doc["store"]["counters"]["sent_samples"]
    assert doc["store"]["counters"]["sent_batches"] == len(batches)
