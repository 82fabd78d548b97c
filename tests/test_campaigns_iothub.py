"""Campaigns through the IoT Hub stand-in (the real azure-iot-device SDK): a desired patch with a
campaign acked and applied, an event message with its properties, a hostile expression refused with
its position, and the hand trigger as a direct method."""

from __future__ import annotations

import asyncio
from pathlib import Path

import can
import pytest

from agent.app import Agent
from agent.codec import codec_by_content
from agent.config import build_config
from tests.conftest import CONFIG_DIR
from tests.test_campaigns_agent import BRAKE, HARD_BRAKE, WHEELS, drive
from tests.test_iothub import Hub, hub, standin, until  # noqa: F401 - fixtures

pytestmark = [pytest.mark.campaigns, pytest.mark.iothub]


async def test_campaign_patch_event_properties_and_methods(standin: Hub, tmp_path: Path) -> None:  # noqa: F811
    r = standin.responder
    channel = "iothub-campaigns"
    base = {"vehicle_id": "car-1", "state_dir": str(tmp_path / "state"),
            "buses": [{"name": "chassis", "interface": "virtual", "channel": channel,
                       "databases": [str(CONFIG_DIR / "dbc" / "chassis.dbc")]}],
            "collection": {"default": {"policy": "exclude"}}, "batching": {"max_age_s": 0.3},
            "sink": {"type": "iothub", "retry_initial_s": 0.2, "retry_max_s": 1.0,
                     "iothub": {"server_verification_cert": str(standin.certs["ca"]), "reported_interval_s": 1.0,
                                "connect_timeout_s": 10, "twin_timeout_s": 10, "send_timeout_s": 20}}}
    agent = Agent(build_config(base, base_dir=tmp_path), base=base)
    task = asyncio.create_task(agent.run())
    sender = can.Bus(interface="virtual", channel=channel)
    try:
        await until(lambda: agent.sink.state()["link"] == "connected", what="connected")
        bad = r.push_desired({"campaigns": [{"id": "evil", "trigger": {"expr": "BrakePressure > 1 or ().__class__"}}]})
        nack = await until(lambda: next((a for a in r.acks("campaigns") if a["av"] == bad), None), what="nack")
        assert nack["ac"] == 400
        assert "campaign 'evil': trigger.expr: position 25: attribute access not allowed" in nack["ad"]
        version = r.push_desired({"campaigns": [{**HARD_BRAKE, "pre_s": 0.3, "post_s": 0.3}]})
        ack = await until(lambda: next((a for a in r.acks("campaigns") if a["av"] == version), None), what="ack")
        assert ack["ac"] == 200 and agent.pipeline.campaigns is not None
        for k, (_, fid, data) in enumerate(drive(0.0, 2, [(1.0, 1.2)])):
            sender.send(can.Message(arbitration_id=fid, data=data, is_extended_id=False))
            if k % 6 == 5:
                await asyncio.sleep(0.02)
        msg = await until(lambda: next((m for m in r.telemetry if "campaign" in m.properties), None), what="event")
        props = msg.properties
        assert props["campaign"] == "hard-brake" and props["expr"] == HARD_BRAKE["trigger"]["expr"]
        assert props["priority"] == "high" and len(props["event_id"]) == 24
        header, samples = codec_by_content(props["$.ct"]).decode(msg.body)
        assert header["event"]["event_id"] == props["event_id"]
        assert f"{header['event']['trigger_t']:.3f}" == props["trigger_t"]
        assert {s.signal for s in samples} == {"WheelSpeedFL", "BrakePressure", "AbsActive"}
        assert {s.message for s in samples} == {WHEELS.name, BRAKE.name}

        status, doc = await asyncio.to_thread(r.invoke, "trigger_campaign", {"id": "hard-brake"})
        assert status == 200 and doc["event_id"] != props["event_id"]
        status, doc = await asyncio.to_thread(r.invoke, "list_campaigns")
        assert status == 200 and [(c["id"], c["triggers"]) for c in doc["campaigns"]] == [("hard-brake", 2)]
        status, doc = await asyncio.to_thread(r.invoke, "trigger_campaign", {})
        assert status == 400
    finally:
        sender.shutdown()
        agent.stop.set()
        await asyncio.wait_for(task, 60)
