"""Hostile and messy twins through the real azure-iot-device SDK and the IoT Hub stand-in (issue 13)."""

# ruff: noqa: F811 - the fixtures (hub, standin) are imported from the module that defines them

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import can
import pytest

from tests.iothub_standin import DEVICE_KEY, device_connection_string, wait_for
from tests.test_control import SECRET, hostile_then_valid
from tests.test_iothub import Hub, engine_speeds, hub, running_agent, send_engine, standin, until  # noqa: F401 - the stand-in (module) and its per-test reset

pytestmark = pytest.mark.iothub

RESET = {"buses": None, "collection": None, "encoding": None, "log_level": None, "store": None}


def ack_of(hub: Hub, key: str, version: int) -> dict | None:
    return next((a for a in hub.responder.acks(key) if a["av"] == version), None)


async def test_hostile_patches_then_a_valid_change_while_telemetry_flows(standin: Hub, tmp_path: Path) -> None:
    r = standin.responder
    async with running_agent(tmp_path, standin, "ctl-iothub-hostile") as agent:
        await until(lambda: agent.sink.state()["link"] == "connected" and r.twin_gets, what="connected")
        sender = can.Bus(interface="virtual", channel="ctl-iothub-hostile")

        def valid_change(version: int) -> None:
            with r.lock:
                r.desired["$version"] = version - 1
            assert r.push_desired({**RESET, "batching": {"max_samples": version % 1000 + 500}}) == version
            ack = wait_for(lambda: ack_of(standin, "batching", version), 30, what=f"ack of version {version}")
            assert ack["ac"] == 200 and agent.cfg.batching.max_samples == version % 1000 + 500

        try:
            await asyncio.to_thread(hostile_then_valid, r.push_raw, valid_change, lambda n: send_engine(sender, n),
                                    lambda: engine_speeds(standin))
        finally:
            sender.shutdown()
        assert agent.sink.state()["link"] == "connected" and agent.control.healthy()
        assert agent.control.state()["errors"] == 0


async def test_leftover_invalid_key_offline_change_and_reconnect(standin: Hub, tmp_path: Path) -> None:
    """Real IoT Hub keeps a rejected key: it must not hold back a change made while the car was offline."""
    r = standin.responder
    async with running_agent(tmp_path, standin, "ctl-iothub-leftover") as agent:
        await until(lambda: agent.sink.state()["link"] == "connected" and r.twin_gets, what="connected")
        bad = r.push_desired({"sink": {"type": "file"}})
        nack = await until(lambda: ack_of(standin, "sink", bad), what="the sink key refused")
        assert nack["ac"] == 400 and "not writable" in nack["ad"]
        await asyncio.to_thread(standin.broker.kill, signal.SIGKILL)
        with r.lock:
            offline = {**r.desired, "batching": {"max_age_s": 7}, "$version": r.desired["$version"] + 1}
        r.set_twin(offline)  # changed while the car was away; the hub still holds "sink"
        await asyncio.to_thread(standin.broker.start)
        ack = await until(lambda: ack_of(standin, "batching", offline["$version"]), timeout=90,
                          what="the offline change applied after the reconnect")
        assert ack["ac"] == 200 and agent.cfg.batching.max_age_s == 7
        assert ack_of(standin, "sink", offline["$version"])["ac"] == 400
    await asyncio.to_thread(standin.responder.connected.wait, 20)


async def test_a_twin_with_a_lower_version_wins_and_says_so(standin: Hub, tmp_path: Path) -> None:
    r = standin.responder
    async with running_agent(tmp_path, standin, "ctl-iothub-reset") as agent:
        await until(lambda: agent.sink.state()["link"] == "connected" and r.twin_gets, what="connected")
        for _ in range(4):
            v = r.push_desired({"log_level": "debug"})
        await until(lambda: ack_of(standin, "log_level", v), what="version applied")
        stale = await asyncio.to_thread(r.push_raw, json.dumps({"$version": 2, "log_level": "error"}).encode())
        assert stale > v
        s = await until(lambda: next((a for a in r.acks("log_level") if a["av"] == 2 and a["ac"] == 400), None),
                        what="the stale ack")
        assert s["ad"] == f"stale: $version 2 is older than the applied {v}" and agent.cfg.log_level == "debug"
        # The device was re-created: the hub's numbering starts again, the device reconnects.
        await asyncio.to_thread(standin.broker.kill, signal.SIGKILL)
        r.set_twin({"$version": 2, "log_level": "warning"})
        await asyncio.to_thread(standin.broker.start)
        await until(lambda: agent.cfg.log_level == "warning", timeout=90, what="the lower twin applied")
        ack = await until(lambda: r.acks("log_level")[-1] if r.acks("log_level")[-1]["ac"] == 200 else None,
                          what="its ack")
        assert ack == {"value": "warning", "ac": 200, "av": 2, "ad": "applied"}
        reset = await until(lambda: (r.reported.get("control") or {}).get("version_reset"), what="reset reported")
        assert reset["to"] == 2 and reset["from"] >= v
    await asyncio.to_thread(standin.responder.connected.wait, 20)


async def test_a_database_outside_the_folder_is_refused_without_quoting_it(standin: Hub, tmp_path: Path) -> None:
    r = standin.responder
    outside = tmp_path / "outside" / "car.dbc"
    outside.parent.mkdir()
    outside.write_text(f'VERSION ""\n{SECRET} garbage\n')
    inside = tmp_path / "broken.dbc"  # the config file's folder is the default databases_dir
    inside.write_text(f'VERSION ""\nBO_ 1 M: 8 X\n {SECRET} nonsense\n')
    async with running_agent(tmp_path, standin, "ctl-iothub-confine") as agent:
        await until(lambda: agent.sink.state()["link"] == "connected" and r.twin_gets, what="connected")
        for name, why in ((str(outside), "only a file name inside databases_dir"),
                          ("outside/../outside/car.dbc", "only a file name inside databases_dir"),
                          ("broken.dbc", "broken.dbc:3: not a database cantools can read")):
            v = r.push_desired({"buses": [{"name": "pt", "interface": "virtual", "databases": [name]}]})
            ack = await until(lambda v=v: ack_of(standin, "buses", v), what=f"ack for {name}")
            assert ack["ac"] == 400 and why in ack["ad"], ack
        assert agent.cfg.buses[0].channel == "ctl-iothub-confine"
    everything = json.dumps(r.reported_patches)
    assert SECRET not in everything and "garbage" not in everything and "nonsense" not in everything
    assert DEVICE_KEY not in everything


async def test_module_identity_sends_to_its_output(standin: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEHICLE_AGENT_IOTHUB_CONNECTION_STRING", device_connection_string(module="vehicle-agent"))
    sender = can.Bus(interface="virtual", channel="ctl-iothub-module")
    try:
        async with running_agent(tmp_path, standin, "ctl-iothub-module", identity="module_connection_string",
                                 output_name="fleet-out") as agent:
            await until(lambda: agent.sink.state()["link"] == "connected", what="connected as a module")
            send_engine(sender, 0)
            msg = await until(lambda: standin.responder.telemetry[:1], what="module telemetry")
    finally:
        sender.shutdown()
    assert msg[0].topic.startswith("devices/car-1/modules/vehicle-agent/messages/events/")
    assert msg[0].properties["$.on"] == "fleet-out"


async def test_a_session_that_answers_nothing_is_rebuilt(standin: Hub, tmp_path: Path) -> None:
    """The hub's side goes silent while the link stays up (the SDK still says connected): reported
    patches time out, the session is rebuilt (new client, subscribe, full twin), and once the hub
    answers again a change made meanwhile is applied."""
    r = standin.responder
    async with running_agent(tmp_path, standin, "ctl-iothub-dead", twin_timeout_s=3) as agent:
        await until(lambda: agent.sink.state()["link"] == "connected" and r.twin_gets, what="connected")
        fetches = agent.control.state()["twin_fetches"]
        await asyncio.to_thread(r.stop)
        with r.lock:
            r.desired = {"$version": r.desired["$version"] + 5, "log_level": "debug"}
        await until(lambda: agent.control.state()["session_rebuilds"] >= 1, timeout=60, what="the session rebuilt")
        assert agent.sink.state()["session_rebuilds"] >= 1
        await asyncio.to_thread(r.start)
        await until(lambda: agent.cfg.log_level == "debug", timeout=90, what="the twin fetched after the rebuild")
        assert agent.control.state()["twin_fetches"] > fetches and agent.sink.state()["link"] == "connected"
