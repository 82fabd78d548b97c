"""The bundled sample databases and the vehicle simulator: what a demo user sees on the bus."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import can
import pytest

from agent.can.simulator import (
    MAX_STEP_S,
    SIM_BACKLOG_MAX,
    SimulatorStats,
    VehicleSimulator,
    frames_per_second,
    record_candump_log,
    run_simulator,
)
from agent.decode.database import load_databases
from tests.conftest import CONFIG_DIR, DATA, run_cli, until

DBCS = {name: CONFIG_DIR / "dbc" / f"{name}.dbc" for name in ("powertrain", "chassis", "body")}


def test_sample_databases_cover_what_real_cars_use() -> None:
    dbs = {name: load_databases([path]) for name, path in DBCS.items()}
    messages = [m for db in dbs.values() for m in db.messages]
    signals = [s for m in messages for s in m.signals]
    assert len(messages) >= 25
    assert any(m.is_multiplexed() for m in messages)
    assert any(s.choices for s in signals)
    assert any(m.is_fd and m.length == 64 for m in dbs["chassis"].messages)
    assert any(m.is_extended_frame for m in messages)
    assert {s.byte_order for s in signals} == {"little_endian", "big_endian"}
    assert any(s.is_float for s in signals) and any(s.is_signed and not s.is_float for s in signals)
    assert all(m.cycle_time for m in messages), "every sample message has a GenMsgCycleTime"


@pytest.mark.parametrize("name", sorted(DBCS))
def test_every_message_at_its_cycle_time_and_decodable(name: str) -> None:
    db = load_databases([DBCS[name]])
    sim = VehicleSimulator(db, seed=3, start_t=1000.0)
    frames = [f for step in range(1, 201) for f in sim.frames_until(step * 0.05)]  # 10 s of simulated time
    by_id = {m.frame_id: m for m in db.messages}
    counts = Counter(f.id for f in frames)
    for msg in db.messages:
        expected = 10.0 / (msg.cycle_time / 1000.0)
        assert abs(counts[msg.frame_id] - expected) <= 1, (msg.name, counts[msg.frame_id], expected)
    assert [f.t for f in frames] == sorted(f.t for f in frames)
    assert 1000.0 <= frames[0].t and frames[-1].t <= 1010.0
    for f in frames:
        msg = by_id[f.id]
        assert len(f.data) == msg.length and f.is_fd == msg.is_fd and f.is_extended == msg.is_extended_frame
        msg.decode(f.data)  # raises on anything out of range or malformed


def test_values_move_like_a_drive() -> None:
    db = load_databases([DBCS["powertrain"], DBCS["chassis"], DBCS["body"]])
    sim = VehicleSimulator(db, seed=11, start_t=0.0)
    by_id = {m.frame_id: m for m in db.messages}
    series: dict[str, list[tuple[float, float | str]]] = defaultdict(list)
    for step in range(1, 180 * 20 + 1):  # three minutes in 50 ms ticks
        for f in sim.frames_until(step * 0.05):
            for sig, value in by_id[f.id].decode(f.data).items():
                series[sig].append((f.t, value if isinstance(value, int | float) else str(value)))
    speed = [v for _, v in series["VehicleSpeed"]]
    assert max(speed) > 25 and min(speed) == 0, "the car stands, drives and stops"
    assert sum(1 for a, b in zip(speed, speed[1:], strict=False) if abs(b - a) > 15) == 0, "speed ramps, no jumps"
    rpm = [v for _, v in series["EngineSpeed"]]
    assert min(rpm) >= 700 and max(rpm) < 7000
    wheel = dict(series["WheelSpeedFL"])
    # wheel speed follows vehicle speed: compare at the nearest timestamps
    vs = series["VehicleSpeed"]
    close = [abs(wheel[t] - v) for t, v in vs[::50] for t in [min(wheel, key=lambda w, t=t: abs(w - t))]]
    assert max(close) < 3.0
    assert {v for _, v in series["AirbagDeployment"]} == {"None"}, "no simulated crashes"
    counters = [v for _, v in series["EngineDataCounter"]]
    assert counters[:17] == [i % 16 for i in range(1, 18)]
    gears = {v for _, v in series["CurrentGear"]}
    assert len(gears) >= 3, "the gearbox shifts"


def test_same_seed_same_traffic(tmp_path: Path) -> None:
    db = load_databases([DBCS["powertrain"]])
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    assert record_candump_log(db, a, seconds=3, seed=5) == record_candump_log(db, b, seconds=3, seed=5)
    assert a.read_text() == b.read_text()


async def test_run_simulator_sends_on_a_bus_in_real_time() -> None:
    db = load_databases([DBCS["chassis"]])
    tx = can.Bus(interface="virtual", channel="sim-test", receive_own_messages=False)
    rx = can.Bus(interface="virtual", channel="sim-test")
    try:
        sent = await run_simulator(tx, db, rate=4.0, duration=2.0, seed=1)
        got: list[can.Message] = []
        while (msg := rx.recv(0)) is not None:
            got.append(msg)
    finally:
        tx.shutdown()
        rx.shutdown()
    nominal = sum(2.0 / (m.cycle_time / 1000.0) for m in db.messages)
    assert len(got) == sent and abs(sent - nominal) <= len(db.messages)
    fd = [m for m in got if m.arbitration_id == 0x200]
    assert fd and all(m.is_fd and m.bitrate_switch and len(m.data) == 64 for m in fd)


def test_simulate_record_then_decode_cli(tmp_path: Path) -> None:
    log_path = tmp_path / "drive.log"
    res = run_cli("simulate", "--dbc", str(DBCS["body"]), "--channel", "vcan2", "--record", str(log_path),
                  "--duration", "5")
    assert res.returncode == 0, res.stderr
    lines = log_path.read_text().splitlines()
    assert lines and all(" vcan2 " in line for line in lines)
    res = run_cli("decode", "--dbc", str(DBCS["body"]), "--labels", str(log_path))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == len(lines)
    ignition = [r for r in rows if r["message"] == "IgnitionStatus"]
    assert ignition and ignition[0]["signals"]["IgnitionState"] == "Run" and ignition[0]["id"] == 0x18FF0121


def test_bundled_sample_log_decodes_cleanly() -> None:
    res = run_cli("decode", "--dbc", str(DBCS["powertrain"]), str(CONFIG_DIR / "sample-drive.log"))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) > 1000
    assert "unknown_ids=0" in res.stderr.replace('"unknown_ids": 0', "unknown_ids=0")
    assert {r["message"] for r in rows} >= {"EngineData", "EngineDiagnostics", "CruiseControlVehicleSpeed"}


def test_simulate_rejects_a_broken_database(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dbc"
    bad.write_text('VERSION ""\n\nBO_ 100 Broken: 8 ECU\n SG_ X : 0|8@1+ (1,0) [0|255] "" ECU GARBAGE\n')
    res = run_cli("simulate", "--dbc", str(bad), "--channel", "x", "--interface", "virtual", "--duration", "1")
    assert res.returncode == 2 and "bad.dbc" in res.stderr


def test_run_simulator_stops_promptly() -> None:
    """run_simulator honours its stop event promptly (the agent stops buses this way on a config change)."""
    db = load_databases([DBCS["body"]])

    async def main() -> int:
        bus = can.Bus(interface="virtual", channel="sim-stop")
        stop = asyncio.Event()
        task = asyncio.create_task(run_simulator(bus, db, stop=stop))
        await asyncio.sleep(0.3)
        stop.set()
        try:
            return await asyncio.wait_for(task, 10)
        finally:
            bus.shutdown()

    assert asyncio.run(main()) > 0


async def test_the_simulator_holds_while_its_reader_is_behind() -> None:
    """A 700-message database makes ~27,000 frames/s; a reader that takes none must not make python-can's
    virtual bus queue them without bound (4.8 GB after 12 minutes): the simulation holds at the
    backlog, counts how far it fell behind real time, and goes on once the reader took the frames."""
    db = load_databases([DATA / "oem_sloppy.dbc"], strict=False)
    bound = SIM_BACKLOG_MAX + frames_per_second(db) * MAX_STEP_S + len(db.messages)  # one step over at most
    tx = can.Bus(interface="virtual", channel="sim-backlog", receive_own_messages=False)
    rx = can.Bus(interface="virtual", channel="sim-backlog")
    stats, stop = SimulatorStats(), asyncio.Event()
    task = asyncio.create_task(run_simulator(tx, db, stop=stop, stats=stats))
    received = 0
    try:
        await until(lambda: stats.behind_s >= 1.0, timeout=60, what="the simulation holding for a second")
        assert SIM_BACKLOG_MAX <= rx.queue.qsize() <= bound and stats.backlog_peak <= bound
        sent = stats.sent
        while rx.recv(0) is not None:
            received += 1
        await until(lambda: stats.sent > sent, timeout=30, what="the simulation going on")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        while rx.recv(0) is not None:
            received += 1
        tx.shutdown()
        rx.shutdown()
    assert received == stats.sent and stats.dropped == 0


def test_an_agent_simulating_a_700_message_database_stays_bounded_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`simulate: true` on the sloppy OEM database: the simulator's backlog stays bounded whatever the
    collector manages (status shows it), and SIGTERM ends the run with exit 0 (it took minutes when the
    simulator had queued hundreds of thousands of frames and held the loop catching up)."""
    import signal
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT, wait_for

    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "vehicle_id": "oem", "state_dir": str(tmp_path / "state"),
        "buses": [{"name": "pt", "databases": [str(DATA / "oem_sloppy.dbc")], "strict": False, "simulate": True,
                   "channel": "sim-oem"}],
        "sink": {"type": "file"}}))
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--no-progress"], cwd=ROOT,
                            env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def simulator() -> dict:
        res = run_cli("status", "--config", str(config), "--json")
        return json.loads(res.stdout)["buses"]["pt"].get("simulator", {}) if res.returncode == 0 else {}

    try:
        wait_for(lambda: simulator().get("sent", 0) > 20_000, 120, interval=0.5, what="20,000 simulated frames")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    sim = json.loads((tmp_path / "state" / "status.json").read_text())["buses"]["pt"]["simulator"]
    db = load_databases([DATA / "oem_sloppy.dbc"], strict=False)
    assert sim["backlog_peak"] <= SIM_BACKLOG_MAX + frames_per_second(db) * MAX_STEP_S + len(db.messages)
    assert sim["dropped"] == 0 and sim["sent"] > 20_000
