"""Campaigns in the running agent: delivered through a real mosquitto as desired state, a drive with
known braking events replayed by the real agent process, event batches checked against cantools'
decode of the same frames; persistence across a restart; python-can's virtual bus with a live
config swap, manual triggers and continuous collection alongside."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import can
import pytest
import yaml

from agent.app import Agent
from agent.can.logformats import format_candump
from agent.codec import codec_by_content
from agent.config import build_config
from agent.decode import load_databases
from agent.uplink.mqtt import decode_message
from tests.conftest import CONFIG_DIR, ROOT, run_cli
from tests.mqtt_broker import Cloud, MqttBroker
from tests.test_mqtt import PASSWORD, broker, mqtt_cfg, until  # noqa: F401 - broker: the module's mosquitto

pytestmark = [pytest.mark.campaigns, pytest.mark.mqtt]

CHASSIS_DBC = CONFIG_DIR / "dbc" / "chassis.dbc"
DB = load_databases([CHASSIS_DBC])
BRAKE, WHEELS = DB.get_message_by_name("BrakeStatus"), DB.get_message_by_name("WheelSpeeds")
HARD_BRAKE = {"id": "hard-brake", "signals": [{"match": "WheelSpeedFL"}], "priority": "high",
              "trigger": {"expr": "$variable.`BrakeStatus.BrakePressure` > 60 && !(AbsActive == 1)"},
              "pre_s": 1.0, "post_s": 1.0}


@pytest.fixture
def cloud(broker: MqttBroker, request: pytest.FixtureRequest) -> Iterator[Cloud]:  # noqa: F811
    c = Cloud(broker, f"fleet/{request.node.name[:40]}", username="cloud", password="cloud-pass")
    yield c
    c.publish("twin/desired", b"", retain=True)
    c.stop()


def brake_data(bar: float) -> bytes:
    return bytes(BRAKE.encode({"BrakePressure": bar, "AbsActive": 0, "EscActive": 0, "TractionControlActive": 0,
                               "BrakeLightOn": int(bar > 0), "BrakeStatusCounter": 0, "BrakeStatusCrc": 0}))


def drive(t0: float, seconds: float, pulses: list[tuple[float, float]]) -> list[tuple[float, int, bytes]]:
    """WheelSpeeds every 10 ms, BrakeStatus every 20 ms; 90 bar during the pulses (s from t0)."""
    frames = []
    for k in range(round(seconds * 100)):
        t = t0 + k / 100
        v = 50 + (k % 300) / 10
        frames.append((round(t, 3), WHEELS.frame_id, bytes(WHEELS.encode(
            {"WheelSpeedFL": v, "WheelSpeedFR": v, "WheelSpeedRL": v, "WheelSpeedRR": v}))))
        if k % 2 == 0:
            bar = 90.0 if any(a <= k / 100 < b for a, b in pulses) else 0.0
            frames.append((round(t + 0.001, 3), BRAKE.frame_id, brake_data(bar)))
    return frames


def write_log(path: Path, frames: list[tuple[float, int, bytes]]) -> Path:
    path.write_text("\n".join(format_candump(t, "vcan1", fid, data) for t, fid, data in frames) + "\n")
    return path


def expected(frames, lo: float, hi: float, exclusive: bool) -> dict[str, list[tuple[float, float]]]:
    """cantools' decode of the frames in the window, per signal the event carries."""
    out: dict[str, list[tuple[float, float]]] = {"WheelSpeedFL": [], "BrakePressure": [], "AbsActive": []}
    for t, fid, data in frames:
        if (lo < t if exclusive else lo <= t) and t <= hi:
            if fid == WHEELS.frame_id:
                out["WheelSpeedFL"].append((t, round(WHEELS.decode(data)["WheelSpeedFL"], 6)))
            else:
                d = BRAKE.decode(data, decode_choices=False)
                out["BrakePressure"].append((t, round(d["BrakePressure"], 6)))
                out["AbsActive"].append((t, d["AbsActive"]))
    return out


def events_of(cloud: Cloud) -> list[tuple[str, dict, dict[str, list[tuple[float, float]]]]]:
    """(topic, header, samples per signal) of every event batch the cloud received, by trigger time."""
    out = {}
    for topic, payload in cloud.telemetry():
        header, body = decode_message(payload)
        if "event" not in header:
            continue
        _, samples = codec_by_content(header["ct"]).decode(body)
        by_signal: dict[str, list[tuple[float, float]]] = {}
        for s in samples:
            by_signal.setdefault(s.signal, []).append((round(s.t, 3), round(s.value, 6)))
        out[header["id"]] = (topic, header, by_signal)
    return sorted(out.values(), key=lambda e: e[1]["event"]["trigger_t"])


def run_replay(tmp_path: Path, broker: MqttBroker, cloud: Cloud, log: Path) -> None:  # noqa: F811
    cfg = {"vehicle_id": cloud.root.split("/")[1], "state_dir": str(tmp_path / "state"),
           "buses": [{"name": "chassis", "databases": [str(CHASSIS_DBC)], "replay": str(log), "replay_rate": 1.0}],
           "collection": {"default": {"policy": "exclude"}},
           "sink": {"type": "mqtt", "mqtt": mqtt_cfg(broker, cloud)}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_cli("run", "--config", str(path), env={"VEHICLE_AGENT_MQTT_PASSWORD": PASSWORD}, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]


def test_campaign_from_the_cloud_captures_each_braking_event_exactly(tmp_path: Path, broker: MqttBroker,  # noqa: F811
                                                                     cloud: Cloud) -> None:
    cloud.publish("twin/desired", {"$version": 7, "campaigns": [HARD_BRAKE]}, retain=True)
    t0 = 1_750_000_000.0
    # 5 s of plain driving first (the agent connects and takes the campaign), then three stops; the
    # second one's pre window reaches into the first one's post window
    frames = drive(t0, 12, [(5.0, 5.5), (6.5, 6.8), (9.5, 9.9)])
    run_replay(tmp_path, broker, cloud, write_log(tmp_path / "drive.log", frames))

    assert cloud.reported()["campaigns"]["ac"] == 200
    events = events_of(cloud)
    assert [round(h["event"]["trigger_t"] - t0, 3) for _, h, _ in events] == [5.001, 6.501, 9.501]
    seen: set[tuple[str, float]] = set()
    previous = None
    for topic, header, samples in events:
        ev = header["event"]
        assert topic.endswith("/telemetry/high") and header["priority"] == "high"
        assert ev["campaign"] == "hard-brake" and ev["expr"] == HARD_BRAKE["trigger"]["expr"] and ev["complete"]
        assert ev["window"] == [pytest.approx(ev["trigger_t"] - 1), pytest.approx(ev["trigger_t"] + 1)]
        assert ev["follows"] == (previous if ev["start"] > ev["window"][0] else None)
        want = expected(frames, ev["start"], ev["window"][1], exclusive=ev["follows"] is not None)
        assert samples == want, f"event at {ev['trigger_t'] - t0:.3f}"
        for sig, points in samples.items():
            assert not seen & {(sig, t) for t, _ in points}, "overlapping events share no sample"
            seen |= {(sig, t) for t, _ in points}
        previous = ev["event_id"]
    assert events[1][1]["event"]["follows"] == events[0][1]["event"]["event_id"]  # the overlapping pair
    state = cloud.reported()["campaign_state"]["campaigns"]["hard-brake"]
    assert (state["triggers"], state["events"], state["suppressed"]) == (3, 3, 0)

    # the campaign persists: the cloud's retained document is gone, the agent restarts and still captures
    cloud.publish("twin/desired", b"", retain=True)
    frames = drive(t0 + 100, 4, [(2.0, 2.4)])
    before = len(events)
    run_replay(tmp_path, broker, cloud, write_log(tmp_path / "drive2.log", frames))
    later = events_of(cloud)[before:]
    assert [round(h["event"]["trigger_t"] - t0 - 100, 3) for _, h, _ in later] == [2.001]
    ev = later[0][1]["event"]
    assert later[0][2] == expected(frames, ev["start"], ev["window"][1], exclusive=False)


async def test_virtual_bus_live_swap_manual_trigger_and_continuous_collection(tmp_path: Path) -> None:
    """In-process on python-can's virtual bus with the file sink: continuous samples are what the
    policy keeps, the campaign's event equals them over its window, a config swap while the event
    is open keeps it, and a hand trigger gives an event through the method dispatcher."""
    channel = "campaigns-virtual"
    base = {"vehicle_id": "car-v", "state_dir": str(tmp_path / "state"),
            "buses": [{"name": "chassis", "interface": "virtual", "channel": channel, "databases": [str(CHASSIS_DBC)]}],
            "collection": {"default": {"policy": "exclude"}, "signals": [{"match": "WheelSpeedFL", "policy": "all"}]},
            "batching": {"max_age_s": 0.3},
            "campaigns": [{**HARD_BRAKE, "pre_s": 0.5, "post_s": 1.5}]}
    agent = Agent(build_config(base, base_dir=tmp_path), base=base)
    task = asyncio.create_task(agent.run())
    sender = can.Bus(interface="virtual", channel=channel)
    try:
        await until(lambda: agent.status()["buses"].get("chassis", {}).get("state") == "up", what="bus open")
        frames = drive(0.0, 4, [(1.0, 1.3)])
        for k, (_, fid, data) in enumerate(frames):
            sender.send(can.Message(arbitration_id=fid, data=data, is_extended_id=False))
            if k % 6 == 5:
                await asyncio.sleep(0.02)
            if k == 250:  # the event is open (post window): a live swap of the collection config keeps it
                acks = agent.desired.handle({"$version": 3, "collection": {
                    "default": {"policy": "exclude"}, "signals": [{"match": "WheelSpeed*", "policy": "all"}]}}, full=False)
                assert acks["collection"]["ac"] == 200
                assert agent.status()["campaigns"]["campaigns"]["hard-brake"]["pending_events"] == 1
        await until(lambda: agent.status()["campaigns"]["campaigns"]["hard-brake"]["events"] == 1, what="event")
        more = drive(4.0, 1, [])  # driving on: a hand trigger's pre window has frames no event carried yet
        for k, (_, fid, data) in enumerate(more):
            sender.send(can.Message(arbitration_id=fid, data=data, is_extended_id=False))
            if k % 6 == 5:
                await asyncio.sleep(0.02)
        frames += more
        await until(lambda: agent.status()["buses"]["chassis"]["frames"] == len(frames), what="frames read")
        status, answer = agent.control.method("trigger_campaign", {"id": "hard-brake"})
        assert status == 200 and answer["event_id"]
        assert agent.control.method("trigger_campaign", {"id": "nope"})[0] == 404
        listed = agent.control.method("list_campaigns", None)[1]["campaigns"]
        assert [(c["id"], c["state"], c["triggers"]) for c in listed] == [("hard-brake", "active", 2)]
    finally:
        sender.shutdown()
        agent.stop.set()
        await asyncio.wait_for(task, 60)
    rows = [json.loads(x) for f in sorted((tmp_path / "state" / "outbox").glob("*.jsonl"))
            for x in f.read_text().splitlines()]
    continuous = sorted((r["t"], r["value"]) for r in rows if "event" not in r and r["signal"] == "WheelSpeedFL")
    assert [v for _, v in continuous] == [WHEELS.decode(d)["WheelSpeedFL"] for _, fid, d in frames
                                          if fid == WHEELS.frame_id]
    by_event: dict[str, list[dict]] = {}
    for r in rows:
        if "event" in r:
            by_event.setdefault(r["event"], []).append(r)
    braking, manual = sorted(by_event.values(), key=lambda rs: min(r["t"] for r in rs))
    assert {r["campaign"] for r in braking + manual} == {"hard-brake"}
    pressures = [r for r in braking if r["signal"] == "BrakePressure"]
    trigger_t = min(r["t"] for r in pressures if r["value"] > 60)
    window = sorted((r["t"], r["value"]) for r in braking if r["signal"] == "WheelSpeedFL")
    start = continuous.index(window[0])  # the event's samples are a run of the continuous ones, no gap
    assert window == continuous[start:start + len(window)]
    before, after = continuous[start - 1][0], continuous[start + len(window)][0]
    # ... and exactly those of [t - 0.5, t + 1.5] (times rounded to the ms on the wire)
    assert before < trigger_t - 0.5 + 0.001 and window[0][0] >= trigger_t - 0.5 - 0.001
    assert window[-1][0] <= trigger_t + 1.5 + 0.001 and after > trigger_t + 1.5 - 0.001


def test_quick_start_shows_a_braking_event_in_the_outbox(tmp_path: Path) -> None:
    """`vehicle-agent run` on the default config: the simulated drive's first stop is an emergency
    stop, and the default campaign hard-braking puts its event in the outbox."""
    state = tmp_path / "state"
    env = {**os.environ, "VEHICLE_AGENT_STATE_DIR": str(state), "VEHICLE_AGENT_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60  # the first stop comes ~20 s into the drive (about 75 s without it)
        rows: list[dict] = []
        while time.monotonic() < deadline and not rows:
            time.sleep(0.5)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            rows = [json.loads(line) for f in sorted((state / "outbox").glob("*.jsonl")) if (state / "outbox").is_dir()
                    for line in f.read_text().splitlines() if '"campaign"' in line]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert rows and {r["campaign"] for r in rows} == {"hard-braking"} and len({r["event"] for r in rows}) == 1
    pressures = [r["value"] for r in rows if r["signal"] == "BrakePressure"]
    abs_active = [r["value"] for r in rows if r["signal"] == "AbsActive"]
    assert max(pressures) > 100 and max(abs_active) == 1  # the emergency stop, with ABS
    assert {"VehicleSpeed", "WheelSpeedFL", "LongitudinalAccel", "SteeringWheelAngle"} <= {r["signal"] for r in rows}
