"""Hostile desired documents through a real mosquitto: the session, the acks and telemetry go on (issue 13)."""

# ruff: noqa: F811 - the fixtures (broker) are imported from the module that defines them

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

from tests.conftest import DATA, ROOT
from tests.iothub_standin import wait_for
from tests.mqtt_broker import Cloud, MqttBroker
from tests.test_control import hostile_then_valid
from tests.test_mqtt import (
    PASSWORD,
    broker,  # noqa: F401 - the module's mosquitto
    mqtt_cfg,
    running_agent,
    saved_after,
    send_engine,
    speeds,
    until,
)

pytestmark = pytest.mark.mqtt


@pytest.fixture
def cloud(broker: MqttBroker, request: pytest.FixtureRequest) -> Iterator[Cloud]:
    c = Cloud(broker, f"fleet/{request.node.name[:40]}", username="cloud", password="cloud-pass")
    yield c
    c.publish("twin/desired", b"", retain=True)
    c.stop()


def acked(cloud: Cloud, key: str, version: int) -> dict | None:
    a = cloud.reported().get(key)
    return a if isinstance(a, dict) and a.get("av") == version else None


async def test_hostile_documents_then_a_valid_change_while_telemetry_flows(
        tmp_path: Path, broker: MqttBroker, cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEHICLE_AGENT_MQTT_PASSWORD", PASSWORD)
    async with running_agent(tmp_path, broker, cloud, "ctl-mqtt-hostile") as agent:
        await until(lambda: agent.sink.state()["connected"], what="connected")
        sender = can.Bus(interface="virtual", channel="ctl-mqtt-hostile")

        def valid_change(version: int) -> None:
            cloud.publish("twin/desired", {"$version": version, "batching": {"max_samples": version % 1000 + 500}})
            ack = wait_for(lambda: acked(cloud, "batching", version), 30, what=f"ack of version {version}")
            assert ack["ac"] == 200 and agent.cfg.batching.max_samples == version % 1000 + 500

        try:
            await asyncio.to_thread(hostile_then_valid, lambda data: cloud.publish("twin/desired", data),
                                    valid_change, lambda n: send_engine(sender, n), lambda: speeds(cloud))
        finally:
            sender.shutdown()
        assert agent.sink.state()["link"] == "connected" and agent.control.healthy()
        assert agent.control.state()["errors"] == 0


def _agent_yaml(tmp_path: Path, broker: MqttBroker, cloud: Cloud) -> Path:
    cfg = {"vehicle_id": cloud.root.split("/")[1], "state_dir": str(tmp_path / "state"),
           "buses": [{"name": "pt", "interface": "virtual", "channel": "ctl-mqtt-restart", "simulate": True,
                      "databases": [str(DATA / "edge.dbc")]}],
           "batching": {"max_age_s": 0.3},
           "sink": {"type": "mqtt", "retry_initial_s": 0.2, "mqtt": mqtt_cfg(broker, cloud)}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(path)], cwd=ROOT,
                            env={**os.environ, "VEHICLE_AGENT_MQTT_PASSWORD": PASSWORD,
                                 "VEHICLE_AGENT_LOG_FORMAT": "json"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return err


def test_a_retained_poison_survives_restarts_without_wedging(tmp_path: Path, broker: MqttBroker, cloud: Cloud) -> None:
    """The agent process starts (twice) with a poison retained on the broker: each time the poison is
    acked 400, telemetry flows, and the fleet's fix is read and applied."""
    path = _agent_yaml(tmp_path, broker, cloud)
    cloud.publish("twin/desired", b'{"$version": 5, "batching": {"max_samples": 1' + b"0" * 30 + b"}}", retain=True)
    for run in range(2):
        cloud.messages.clear()
        proc = _start(path)
        try:
            wait_for(lambda: cloud.reported().get("$desired", {}).get("ac") == 400, 60, what="the poison refused")
            assert "64 bits" in cloud.reported()["$desired"]["ad"]
            wait_for(lambda: len(cloud.telemetry()) >= 2, 60, what="telemetry despite the poison")
            if run == 1:
                cloud.publish("twin/desired", {"$version": 6, "batching": {"max_samples": 777}}, retain=True)
                ack = wait_for(lambda: acked(cloud, "batching", 6), 60, what="the fix applied")
                assert ack["ac"] == 200
                before = len(cloud.telemetry())
                wait_for(lambda n=before: len(cloud.telemetry()) > n, 60, what="telemetry after the fix")
        finally:
            err = _stop(proc)
        assert "Traceback" not in err
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["control"]["desired_version"] == 6 and status["control"]["errors"] == 0
    assert json.loads((tmp_path / "state" / "desired.json").read_text())["desired"]["batching"]["max_samples"] == 777


async def test_a_lower_version_is_stale_live_and_wins_at_connect(tmp_path: Path, broker: MqttBroker, cloud: Cloud,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEHICLE_AGENT_MQTT_PASSWORD", PASSWORD)
    cloud.publish("methods/flush/request", {"id": "left-retained"}, retain=True)
    async with running_agent(tmp_path, broker, cloud, "ctl-mqtt-versions") as agent:
        await until(lambda: agent.sink.state()["connected"], what="connected")
        cloud.publish("methods/get_status/request", {"id": "live"})
        await until(lambda: cloud.on("methods/get_status/response"), what="a live request answered")
        assert cloud.on("methods/flush/response") == [], "a retained request is not run at connect"
        cloud.publish("methods/flush/request", b"", retain=True)
        cloud.publish("twin/desired", {"$version": 50, "log_level": "debug"}, retain=True)
        await until(lambda: acked(cloud, "log_level", 50), what="version 50 applied")
        cloud.publish("twin/desired", {"$version": 3, "log_level": "warning"}, retain=True)
        stale = await until(lambda: acked(cloud, "log_level", 3), what="the stale ack")
        assert stale["ac"] == 400 and stale["ad"] == "stale: $version 3 is older than the applied 50"
        assert agent.cfg.log_level == "debug"
        published = time.time()
        await until(lambda: saved_after(broker, published), what="the broker saved the retained document")
        # The fleet's backend restarted its numbering: at the next connect the retained document wins.
        await asyncio.to_thread(broker.kill, signal.SIGKILL)
        await asyncio.to_thread(broker.start)
        reset = await until(lambda: (cloud.reported().get("control") or {}).get("version_reset"), timeout=60,
                            what="the version reset reported")
        assert reset["from"] == 50 and reset["to"] == 3 and agent.cfg.log_level == "warning"
