"""The mqtt sink against a real mosquitto on 127.0.0.1: telemetry, twin-style desired/reported, methods, outages."""

from __future__ import annotations

import asyncio
import json
import math
import re
import signal
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import can
import cantools
import pytest
import yaml

from agent.app import Agent
from agent.codec import codec_by_content
from agent.config import build_config
from agent.uplink.mqtt import decode_message
from tests.conftest import CONFIG_DIR, DATA, run_cli, until
from tests.mqtt_broker import Cloud, MqttBroker

pytestmark = pytest.mark.mqtt

DB = cantools.database.load_file(DATA / "edge.dbc")
ENGINE = DB.get_message_by_name("EngineData")
USER, PASSWORD = "car-7", "s3cret-password-for-tests"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttBroker]:
    b = MqttBroker(tmp_path_factory.mktemp("mqtt"), users={USER: PASSWORD, "cloud": "cloud-pass"})
    b.start()
    yield b
    b.kill(signal.SIGTERM)


@pytest.fixture
def cloud(broker: MqttBroker, request: pytest.FixtureRequest) -> Iterator[Cloud]:
    name = request.node.name  # a retained status of another test (or parameter) must not be seen here
    root = f"fleet/{re.sub(r'[^A-Za-z0-9_-]', '-', name[:30])}-{zlib.crc32(name.encode()):08x}"
    c = Cloud(broker, root, username="cloud", password="cloud-pass")
    yield c
    c.stop()


def samples_of(cloud: Cloud) -> dict[str, tuple[dict, list]]:
    """Telemetry as a cloud consumer decodes it: header and samples per batch id (resends collapse)."""
    out: dict[str, tuple[dict, list]] = {}
    for topic, payload in cloud.telemetry():
        header, body = decode_message(payload)
        _, samples = codec_by_content(header["ct"]).decode(body)
        if header["id"] in out:
            assert out[header["id"]][1] == samples, "a resend carries the same contents under the same id"
        out[header["id"]] = (header, samples)
        assert topic.endswith(f"/telemetry/{header['priority']}")
    return out


def mqtt_cfg(broker: MqttBroker, cloud: Cloud, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": broker.tls_port, "ca_file": str(broker.certs["ca"]), "username": USER,
            "topic_prefix": cloud.root.split("/")[0], "reported_interval_s": 0.5, "connect_timeout_s": 5, **extra}


@asynccontextmanager
async def running_agent(tmp_path: Path, broker: MqttBroker, cloud: Cloud, channel: str,
                        **mqtt: Any) -> AsyncIterator[Agent]:
    base = {"vehicle_id": cloud.root.split("/")[1], "state_dir": str(tmp_path / "state"),
            "buses": [{"name": "pt", "interface": "virtual", "channel": channel, "databases": [str(DATA / "edge.dbc")]}],
            "batching": {"max_age_s": 0.3},
            "sink": {"type": "mqtt", "retry_initial_s": 0.2, "retry_max_s": 1.0,
                     "mqtt": mqtt_cfg(broker, cloud, **mqtt)}}
    agent = Agent(build_config(base, base_dir=tmp_path), base=base)
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: agent.status()["buses"].get("pt", {}).get("state") == "up", what="bus open")
        yield agent
    finally:
        agent.stop.set()
        await asyncio.wait_for(task, 60)


def send_engine(bus: can.BusABC, i: int) -> None:
    bus.send(can.Message(arbitration_id=ENGINE.frame_id, is_extended_id=False, data=ENGINE.encode(
        {"EngineSpeed": 1000 + i * 0.25, "CoolantTemp": 80, "Torque": -10.5, "Gear": 3})))


def speeds(cloud: Cloud) -> list[float]:
    return sorted(s.value for _, ss in samples_of(cloud).values() for s in ss if s.signal == "EngineSpeed")


def saved_after(broker: MqttBroker, t: float) -> bool:
    try:
        return (broker.folder / "mosquitto.db").stat().st_mtime > t
    except FileNotFoundError:
        return False


def ms_floor(t: float) -> float:
    return math.floor(t * 1000) / 1000


@pytest.mark.parametrize("secret_from", ["env", "file"])
def test_replayed_drive_arrives_intact_and_decodable(tmp_path: Path, broker: MqttBroker, cloud: Cloud,
                                                     secret_from: str) -> None:
    """The real agent process, TLS + password from the environment or from the file a *_FILE variable
    names (as container secrets are mounted), a whole log replayed at debug level: every sample
    arrives, and the password appears in no log line and no reported property."""
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    env = ({"VEHICLE_AGENT_MQTT_PASSWORD": PASSWORD} if secret_from == "env" else
           {"VEHICLE_AGENT_MQTT_PASSWORD_FILE": str(secret), "VEHICLE_AGENT_MQTT_PASSWORD": ""})
    cfg = {"vehicle_id": cloud.root.split("/")[1], "state_dir": str(tmp_path / "state"), "log_level": "debug",
           "buses": [{"name": "powertrain", "databases": [str(CONFIG_DIR / "dbc" / "powertrain.dbc")],
                      "replay": str(CONFIG_DIR / "sample-drive.log")}],
           "collection": {"default": {"policy": "all"}}, "batching": {"max_samples": 5000},
           "sink": {"type": "mqtt", "mqtt": mqtt_cfg(broker, cloud)}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_cli("run", "--config", str(path), env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert PASSWORD not in res.stdout + res.stderr, "the password is never logged"

    expected = [json.loads(x) for x in run_cli("decode", "--dbc", str(CONFIG_DIR / "dbc" / "powertrain.dbc"),
                                              str(CONFIG_DIR / "sample-drive.log")).stdout.splitlines()]
    want = sorted((m["message"], sig, round(v, 6)) for m in expected for sig, v in m["signals"].items())
    batches = samples_of(cloud)
    got = sorted((s.message, s.signal, round(s.value, 6)) for _, ss in batches.values() for s in ss)
    assert got == want
    for header, ss in batches.values():
        assert header["samples"] == len(ss) and header["vehicle"] == cfg["vehicle_id"]
        assert header["ce"] == "zstd" and header["buses"] == ["powertrain"]
        assert header["first_t"] == pytest.approx(min(s.t for s in ss), abs=0.001)
    assert cloud.on("status")[:1] == [b"online"] and cloud.on("status")[-1] == b"offline"
    reported = cloud.reported()
    assert reported["agent"]["vehicle_id"] == cfg["vehicle_id"] and "powertrain" in reported["buses"]
    assert PASSWORD not in json.dumps(reported)


async def test_desired_state_applied_live_and_bad_documents_rejected(tmp_path: Path, broker: MqttBroker,
                                                                     cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEHICLE_AGENT_MQTT_PASSWORD", PASSWORD)
    sender = can.Bus(interface="virtual", channel="mqtt-desired")
    async with running_agent(tmp_path, broker, cloud, "mqtt-desired") as agent:
        send_engine(sender, 0)
        await until(lambda: {s.signal for _, ss in samples_of(cloud).values() for s in ss} >= {"Torque", "EngineSpeed"},
                    what="all signals collected before the change")
        cloud.publish("twin/desired", {"$version": 2, "collection": {
            "default": {"policy": "exclude"}, "signals": [{"match": "EngineSpeed", "policy": "all"}]}}, retain=True)
        ack = await until(lambda: cloud.reported().get("collection"), what="ack of the desired change")
        assert ack["ac"] == 200 and ack["av"] == 2 and ack["ad"] == "applied"
        changed_at = ms_floor(time.time())
        for i in range(1, 21):
            send_engine(sender, i)
        await until(lambda: len([s for _, ss in samples_of(cloud).values() for s in ss if s.t >= changed_at]) >= 20,
                    what="samples after the change")
        assert {s.signal for _, ss in samples_of(cloud).values() for s in ss if s.t >= changed_at} == {"EngineSpeed"}

        cloud.publish("twin/desired", b"{not json", retain=True)
        await until(lambda: cloud.reported().get("$desired", {}).get("ac") == 400, what="malformed document rejected")
        assert "desired document" in cloud.reported()["$desired"]["ad"]
        cloud.publish("twin/desired", {"$version": 3, "collection": {"default": {"policy": "exclude"},
                      "signals": [{"match": "EngineSpeed", "policy": "all"}]}, "batching": {"max_age_s": -1}}, retain=True)
        nack = await until(lambda: (cloud.reported().get("batching") or {}).get("av") == 3 and cloud.reported()["batching"],
                           what="invalid value rejected")
        assert nack["ac"] == 400 and "batching.max_age_s" in nack["ad"]
        assert agent.cfg.batching.max_age_s == 0.3 and agent.cfg.collection.default.policy == "exclude"
        still_at = ms_floor(time.time())
        for i in range(21, 31):
            send_engine(sender, i)
        await until(lambda: len([s for _, ss in samples_of(cloud).values() for s in ss if s.t >= still_at]) >= 10,
                    what="still collecting under the last good config")

        cloud.publish("methods/get_status/request", {"id": "r1"})
        reply = await until(lambda: cloud.on("methods/get_status/response"), what="method response")
        doc = json.loads(reply[-1])
        assert doc["id"] == "r1" and doc["status"] == 200 and doc["payload"]["sink"]["type"] == "mqtt"
        cloud.publish("methods/reboot/request", {"id": "r2"})
        reply = await until(lambda: cloud.on("methods/reboot/response"), what="404 response")
        assert json.loads(reply[-1])["status"] == 404
    sender.shutdown()
    cloud.publish("twin/desired", b"", retain=True)  # clear the retained desired state for other tests


async def test_broker_killed_mid_stream_loses_nothing(tmp_path: Path, broker: MqttBroker, cloud: Cloud,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEHICLE_AGENT_MQTT_PASSWORD", PASSWORD)
    sender = can.Bus(interface="virtual", channel="mqtt-kill")
    n = 0

    async def feed(count: int) -> None:
        nonlocal n
        for _ in range(count):
            send_engine(sender, n)
            n += 1
            await asyncio.sleep(0.005)

    async with running_agent(tmp_path, broker, cloud, "mqtt-kill") as agent:
        await until(lambda: agent.sink.state()["connected"], what="connected")
        subscribed = time.time()
        await feed(150)
        # The cloud's persistent session must be on disk before the SIGKILL (autosave every second), or
        # what the agent sends before the cloud client reconnects has no session to queue in.
        await until(lambda: saved_after(broker, subscribed), what="broker saved the cloud's session")
        await asyncio.to_thread(broker.kill, signal.SIGKILL)
        await feed(150)  # collected while the broker is away: the store keeps it
        await until(lambda: agent.forwarder.status.state == "failing", what="uplink failing")
        assert not agent.sink.state()["connected"]
        await asyncio.to_thread(broker.start)
        await feed(150)
        await until(lambda: len(speeds(cloud)) >= n, timeout=90, what="every sample at the cloud")
        await until(lambda: agent.store.stats().batches == 0, what="store drained")
        assert agent.sink.state()["connects"] >= 2, "reconnected (and resubscribed)"
    sender.shutdown()
    assert speeds(cloud) == [1000 + i * 0.25 for i in range(n)]


async def test_reported_state_is_throttled_to_one_update_per_interval(tmp_path: Path, broker: MqttBroker,
                                                                       cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames arrive all the time (the status changes every second), yet the cloud gets at most one
    reported-state message per reported_interval_s, and a reconnect does not bypass it."""
    monkeypatch.setenv("VEHICLE_AGENT_MQTT_PASSWORD", PASSWORD)
    sender = can.Bus(interface="virtual", channel="mqtt-throttle")
    topic = f"{cloud.root}/twin/reported"

    def reported_at() -> list[float]:
        with cloud.lock:
            return [t for t, tp in cloud.arrived if tp == topic]

    async with running_agent(tmp_path, broker, cloud, "mqtt-throttle", reported_interval_s=1.5) as agent:
        for i in range(60):
            send_engine(sender, i)
            await asyncio.sleep(0.1)
            if i >= 20:
                agent.control.reporter.reset()  # what a (flapping) reconnect does: resend all, not early
        await until(lambda: len(reported_at()) >= 4, what="several reported-state updates")
    sender.shutdown()
    times = reported_at()
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) > 1.5 - 0.3, f"at most one update per 1.5 s (delivery jitter aside): {gaps}"


async def test_bad_credentials_are_a_clear_error_state(tmp_path: Path, broker: MqttBroker, cloud: Cloud,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEHICLE_AGENT_MQTT_PASSWORD", "wrong-password")
    sender = can.Bus(interface="virtual", channel="mqtt-badpw")
    async with running_agent(tmp_path, broker, cloud, "mqtt-badpw", credential_retry_s=20) as agent:
        send_engine(sender, 0)
        await until(lambda: agent.sink.state()["link"] == "credential_error", what="credential error state")
        assert "refused the credentials" in agent.sink.state()["link_error"]
        await until(lambda: agent.store.stats().batches >= 1, what="batch kept in the store")
        await until(lambda: agent.forwarder.status.consecutive_failures >= 1, what="send failed")
        assert "wrong-password" not in json.dumps(agent.status())
    sender.shutdown()
    assert cloud.telemetry() == []


def test_missing_tls_file_is_a_config_error(tmp_path: Path, broker: MqttBroker) -> None:
    cfg = {"vehicle_id": "x", "state_dir": str(tmp_path / "state"),
           "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")], "replay": str(DATA / "edge.log")}],
           "sink": {"type": "mqtt", "mqtt": {"port": broker.tls_port, "ca_file": "missing-ca.pem"}}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for command in ("check-config", "run"):
        res = run_cli(command, *(["--config"] if command == "run" else []), str(path), timeout=60)
        assert res.returncode == 2
        assert f"sink.mqtt.ca_file: file not found: {tmp_path / 'missing-ca.pem'}" in res.stderr
