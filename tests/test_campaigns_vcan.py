"""A campaign on real SocketCAN (marker vcan: natively or in the VM of tools/vcan-tests.sh): a braking
drive written to vcan0 by a raw socket, the agent's event equal to the continuous samples of its
window (kernel timestamps) and to cantools' decode of the frames sent."""

from __future__ import annotations

import pytest

from tests.test_campaigns_agent import BRAKE, HARD_BRAKE, WHEELS, drive
from tests.test_vcan import DBC, Sender, agents, vcan0  # noqa: F401 - fixtures

pytestmark = [pytest.mark.vcan, pytest.mark.campaigns]


def test_braking_event_on_vcan(vcan0: str, agents) -> None:  # noqa: F811
    agent = agents({"buses": [{"name": "chassis", "interface": "socketcan", "channel": vcan0,
                               "databases": [str(DBC / "chassis.dbc")]}],
                    "collection": {"default": {"policy": "exclude"}, "signals": [{"match": "WheelSpeedFL", "policy": "all"}]},
                    "campaigns": [{**HARD_BRAKE, "pre_s": 0.5, "post_s": 1.0}]})
    agent.wait(lambda: agent.bus("chassis").get("state") == "up", "the bus open")
    frames = drive(0.0, 3, [(1.0, 1.3)])
    sender = Sender(vcan0)
    try:
        sender.send_all([(fid, data, False) for _, fid, data in frames], burst=6)
    finally:
        sender.close()
    agent.wait(lambda: agent.bus("chassis").get("frames") == len(frames), "every frame read", timeout=30)
    agent.wait(lambda: agent.status().get("campaigns", {}).get("campaigns", {}).get("hard-brake", {}).get("events") == 1,
               "the braking event", timeout=30)
    agent.stop()
    rows = agent.samples()
    continuous = sorted((r["t"], r["value"]) for r in rows if "event" not in r and r["signal"] == "WheelSpeedFL")
    sent_wheels = [WHEELS.decode(d)["WheelSpeedFL"] for _, fid, d in frames if fid == WHEELS.frame_id]
    assert [v for _, v in continuous] == sent_wheels
    event = [r for r in rows if r.get("campaign") == "hard-brake"]
    window = sorted((r["t"], r["value"]) for r in event if r["signal"] == "WheelSpeedFL")
    start = continuous.index(window[0])
    assert window == continuous[start:start + len(window)]  # a run of the kernel-stamped samples, no gap
    pressures = [r["value"] for r in sorted(event, key=lambda r: r["t"]) if r["signal"] == "BrakePressure"]
    sent = [BRAKE.decode(d, decode_choices=False)["BrakePressure"] for _, fid, d in frames if fid == BRAKE.frame_id]
    assert any(pressures == sent[k:k + len(pressures)] for k in range(len(sent)))
    assert max(pressures) == pytest.approx(90.0) and len(agent.events("campaign_event")) == 1
