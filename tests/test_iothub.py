"""The iothub sink and the twin with the real azure-iot-device SDK against a local IoT Hub stand-in.

mosquitto (TLS on 127.0.0.1:8883, the SDK's fixed port) and a responder that plays the hub's side
(tests/iothub_standin.py). The agent runs in-process on a python-can virtual bus fed by the test.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import can
import cantools
import pytest
import structlog
import yaml

from agent.app import Agent
from agent.codec import codec_by_content
from agent.config import build_config
from tests.conftest import CONFIG_DIR, DATA, run_cli, until
from tests.iothub_standin import (
    DEVICE_KEY,
    HUB,
    HUB_MAX_PACKET,
    TLS_PORT,
    Broker,
    Responder,
    WorkloadAPI,
    device_connection_string,
    edge_environment,
    make_certs,
    make_device_cert,
    port_free,
)

pytestmark = pytest.mark.iothub

DB = cantools.database.load_file(DATA / "edge.dbc")
ENGINE = DB.get_message_by_name("EngineData")


class Hub:
    def __init__(self, folder: Path) -> None:
        self.certs = make_certs(folder / "certs")
        self.broker = Broker(folder / "broker", self.certs)
        self.broker.start()
        self.responder = Responder(self.broker.plain_port)
        self.responder.start()

    def reset(self) -> None:
        r = self.responder
        with r.lock:
            r.desired, r.reported = {"$version": 1}, {"$version": 1}
            r.telemetry.clear()
            r.reported_patches.clear()
            r.method_results.clear()

    def restart_broker(self, *, refuse_all: bool = False, require_client_cert: bool = False,
                       sig: int = signal.SIGTERM) -> None:
        self.broker.kill(sig)
        self.broker.refuse_all = refuse_all
        self.broker.require_client_cert = require_client_cert
        self.broker.start()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not port_free(TLS_PORT):
        pytest.fail(f"127.0.0.1:{TLS_PORT} is in use: stop the process holding it (the SDK cannot use another port)")
    h = Hub(tmp_path_factory.mktemp("iothub"))
    yield h
    h.responder.stop()
    h.broker.kill(signal.SIGTERM)


@pytest.fixture
def standin(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> Hub:
    hub.reset()
    monkeypatch.setenv("VEHICLE_AGENT_IOTHUB_CONNECTION_STRING", device_connection_string())
    return hub


def _config(tmp_path: Path, hub: Hub, channel: str, **iothub: Any) -> dict[str, Any]:
    return {"vehicle_id": "car-1", "state_dir": str(tmp_path / "state"),
            "buses": [{"name": "pt", "interface": "virtual", "channel": channel,
                       "databases": [str(DATA / "edge.dbc")]}],
            "batching": {"max_age_s": 0.3},
            "sink": {"type": "iothub", "retry_initial_s": 0.2, "retry_max_s": 1.0,
                     "iothub": {"server_verification_cert": str(hub.certs["ca"]), "reported_interval_s": 1.0,
                                "connect_timeout_s": 10, "twin_timeout_s": 10, "send_timeout_s": 20, **iothub}}}


@asynccontextmanager
async def running_agent(tmp_path: Path, hub: Hub, channel: str, settings: dict[str, Any] | None = None,
                        **iothub: Any) -> AsyncIterator[Agent]:
    base = {**_config(tmp_path, hub, channel, **iothub), **(settings or {})}
    agent = Agent(build_config(base, base_dir=tmp_path), base=base)
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        agent.stop.set()
        await asyncio.wait_for(task, 60)


def agent_log_level() -> int:
    """The level the in-process agent's structlog loggers filter at now."""
    return structlog.get_logger().bind().get_effective_level()


def ms_floor(t: float) -> float:
    return math.floor(t * 1000) / 1000


def send_engine(bus: can.BusABC, i: int) -> None:
    bus.send(can.Message(arbitration_id=ENGINE.frame_id, is_extended_id=False, data=ENGINE.encode(
        {"EngineSpeed": 1000 + i * 0.25, "CoolantTemp": 80, "Torque": -10.5, "Gear": 3})))


def received_samples(hub: Hub, since: float = 0.0) -> dict[str, list]:
    """Samples per batch id, decoded as a cloud consumer would (duplicates of an id collapse).

    `since`: only batches created from then on (a batch id starts with its creation time in ms). A
    broker restored from its last autosave may deliver an earlier test's messages once more.
    """
    out = {}
    with hub.responder.lock:
        messages = list(hub.responder.telemetry)
    for m in messages:
        if int(m.properties["$.mid"][:12], 16) < since * 1000:
            continue
        _, samples = codec_by_content(m.properties["$.ct"]).decode(m.body)
        out[m.properties["$.mid"]] = samples
    return out


def engine_speeds(hub: Hub, since: float = 0.0) -> list[float]:
    return sorted(s.value for samples in received_samples(hub, since).values() for s in samples
                  if s.signal == "EngineSpeed")


def saved_after(hub: Hub, t: float) -> bool:
    """Whether mosquitto's autosave (every second) wrote its state after `t`."""
    try:
        return (hub.broker.folder / "data" / "mosquitto.db").stat().st_mtime > t
    except FileNotFoundError:
        return False


async def test_telemetry_content_properties_and_reported_state(standin: Hub, tmp_path: Path) -> None:
    sender = can.Bus(interface="virtual", channel="iothub-telemetry")
    async with running_agent(tmp_path, standin, "iothub-telemetry") as agent:
        await until(lambda: standin.responder.twin_gets and agent.sink.state()["link"] == "connected",
                    what="connected and twin fetched")
        for i in range(200):
            send_engine(sender, i)
            if i % 50 == 0:
                await asyncio.sleep(0.02)
        await until(lambda: len(engine_speeds(standin)) >= 200, what="200 EngineSpeed samples at the hub")
        await until(lambda: any("store" in p and "uplink" in p for p in standin.responder.reported_patches),
                    what="reported state")
    sender.shutdown()
    assert engine_speeds(standin) == [1000 + i * 0.25 for i in range(200)]
    msg = standin.responder.telemetry[0]
    p = msg.properties
    assert msg.topic.startswith("devices/car-1/messages/events/")
    assert p["$.ct"] == "application/vnd.vehicle-agent.columnar+msgpack" and p["$.ce"] == "zstd"
    assert p["vehicle"] == "car-1" and p["bus"] == "pt" and p["priority"] == "normal" and p["schema"] == "1"
    assert p["simulated"] == "false"  # a route can keep simulated data out of the fleet's storage
    assert int(p["samples"]) == len(received_samples(standin)[p["$.mid"]])
    assert float(p["first_t"]) <= float(p["last_t"])
    reported = next(p for p in standin.responder.reported_patches if "agent" in p)
    assert reported["agent"]["vehicle_id"] == "car-1" and reported["agent"]["version"]
    assert "pt" in reported["buses"] and "batches" in reported["store"]
    everything = json.dumps(standin.responder.reported_patches)
    assert DEVICE_KEY not in everything and "SharedAccessKey" not in everything


async def test_a_batch_over_the_hubs_256_kb_limit_is_split_and_arrives_whole(standin: Hub, tmp_path: Path) -> None:
    """3,200 samples in one json batch (~290 KB) against a broker that refuses packets over 256 KB, as IoT Hub does."""
    sender = can.Bus(interface="virtual", channel="iothub-big")
    settings = {"batching": {"max_age_s": 5}, "encoding": {"format": "json"}}
    async with running_agent(tmp_path, standin, "iothub-big", settings) as agent:
        await until(lambda: agent.sink.state()["link"] == "connected", what="connected")
        for i in range(800):
            send_engine(sender, i)
        await until(lambda: len(engine_speeds(standin)) >= 800, what="every EngineSpeed sample at the hub")
        await until(lambda: sum(len(s) for s in received_samples(standin).values()) >= 3200, what="every sample")
    sender.shutdown()
    assert engine_speeds(standin) == [1000 + i * 0.25 for i in range(800)]
    with standin.responder.lock:
        sizes = sorted(len(m.body) for m in standin.responder.telemetry)
    assert len(sizes) >= 2 and sum(sizes) > HUB_MAX_PACKET, f"the batch was over the limit and split: {sizes}"
    assert sizes[-1] <= 256 * 1024 - 4096, "each part within batching.max_bytes"
    assert sum(len(s) for s in received_samples(standin).values()) == 3200


def test_the_connection_string_from_the_file_a_FILE_variable_names(standin: Hub, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent as its own process with only $VEHICLE_AGENT_IOTHUB_CONNECTION_STRING_FILE set (as a
    container secret is mounted), a whole drive replayed at debug level: the SDK connects with the
    file's connection string and every sample arrives; the key is in no log line, in neither the
    status file nor `vehicle-agent status`, and in no reported property."""
    conn = device_connection_string()
    secret = tmp_path / "iothub-connection-string"
    secret.write_text(conn + "\n")  # as `echo ... > file` writes it
    monkeypatch.delenv("VEHICLE_AGENT_IOTHUB_CONNECTION_STRING")
    dbc = CONFIG_DIR / "dbc" / "powertrain.dbc"
    cfg = {**_config(tmp_path, standin, "unused"), "log_level": "debug", "batching": {"max_samples": 5000},
           "buses": [{"name": "pt", "databases": [str(dbc)], "replay": str(CONFIG_DIR / "sample-drive.log")}]}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_cli("run", "--config", str(path), "--no-progress", timeout=180,
                  env={"VEHICLE_AGENT_IOTHUB_CONNECTION_STRING_FILE": str(secret)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert any(json.loads(x)["event"] == "iothub_connected" for x in res.stderr.splitlines() if x.startswith("{"))

    drive = run_cli("decode", "--dbc", str(dbc), str(CONFIG_DIR / "sample-drive.log")).stdout
    decoded = [json.loads(x) for x in drive.splitlines()]
    want = sorted((m["message"], sig, round(v, 6)) for m in decoded for sig, v in m["signals"].items())
    got = sorted((s.message, s.signal, round(s.value, 6)) for ss in received_samples(standin).values() for s in ss)
    assert want and got == want, "every sample of the drive arrived once"
    status_cli = run_cli("status", "--config", str(path))
    assert status_cli.returncode == 0, status_cli.stderr[-2000:]
    reported = json.dumps(standin.responder.reported_patches)
    assert "store" in reported and "agent" in reported
    for where, text in {"log": res.stdout + res.stderr, "status file": (tmp_path / "state" / "status.json").read_text(),
                        "vehicle-agent status": status_cli.stdout + status_cli.stderr, "reported": reported}.items():
        assert DEVICE_KEY not in text and "SharedAccessKey" not in text, f"the secret is in the {where}"


async def test_desired_patch_live_and_invalid_patch_rejected(standin: Hub, tmp_path: Path) -> None:
    sender = can.Bus(interface="virtual", channel="iothub-desired")
    r = standin.responder
    async with running_agent(tmp_path, standin, "iothub-desired") as agent:
        await until(lambda: agent.sink.state()["link"] == "connected", what="connected")
        send_engine(sender, 0)
        await until(lambda: {s.signal for ss in received_samples(standin).values() for s in ss} >= {"Torque"},
                    what="Torque collected before the patch")
        version = r.push_desired({"collection": {"default": {"policy": "exclude"},
                                                 "signals": [{"match": "EngineSpeed", "policy": "all"}]}})
        ack = await until(lambda: next((a for a in r.acks("collection") if a["av"] == version), None),
                          what="ack of the collection patch")
        assert ack["ac"] == 200 and ack["ad"] == "applied"
        patched_at = ms_floor(time.time())  # batches carry ms timestamps
        for i in range(1, 30):
            send_engine(sender, i)
        await until(lambda: len([s for ss in received_samples(standin).values() for s in ss if s.t >= patched_at]) >= 29,
                    what="samples after the patch")
        after = {s.signal for ss in received_samples(standin).values() for s in ss if s.t >= patched_at}
        assert after == {"EngineSpeed"}  # the pipeline collects differently now

        bad = r.push_desired({"batching": {"max_age_s": -1}})
        nack = await until(lambda: next((a for a in r.acks("batching") if a["av"] == bad), None),
                           what="ack of the invalid patch")
        assert nack["ac"] == 400 and "batching.max_age_s" in nack["ad"]
        assert agent.cfg.batching.max_age_s == 0.3 and agent.cfg.collection.default.policy == "exclude"
        rejected_at = ms_floor(time.time())
        for i in range(30, 40):
            send_engine(sender, i)
        await until(lambda: len([s for ss in received_samples(standin).values() for s in ss if s.t >= rejected_at]) >= 10,
                    what="collection still running after the rejected patch")
    sender.shutdown()
    # The applied desired state survives a restart (offline start).
    saved = json.loads((tmp_path / "state" / "desired.json").read_text())
    assert saved["version"] == version and saved["desired"]["collection"]["default"]["policy"] == "exclude"


async def test_direct_methods(standin: Hub, tmp_path: Path) -> None:
    r = standin.responder
    async with running_agent(tmp_path, standin, "iothub-methods") as agent:
        await until(lambda: agent.sink.state()["link"] == "connected", what="connected")
        status, doc = await asyncio.to_thread(r.invoke, "get_status")
        assert status == 200 and doc["agent"]["vehicle_id"] == "car-1" and doc["sink"]["type"] == "iothub"
        status, doc = await asyncio.to_thread(r.invoke, "flush")
        assert status == 200 and doc["flushed"] is True
        status, doc = await asyncio.to_thread(r.invoke, "set_log_level", {"level": "debug", "duration_s": 30})
        assert status == 200 and doc == {"level": "debug", "duration_s": 30}
        assert agent_log_level() == logging.DEBUG
        status, doc = await asyncio.to_thread(r.invoke, "set_log_level", {"level": "warning", "duration_s": 0.5})
        assert status == 200 and agent_log_level() == logging.WARNING
        await until(lambda: agent_log_level() == logging.INFO, timeout=10, what="the config's level restored")
        status, doc = await asyncio.to_thread(r.invoke, "set_log_level", {"level": "loud"})
        assert status == 400 and "level must be one of" in doc["error"]
        status, doc = await asyncio.to_thread(r.invoke, "reboot_now", {})
        assert status == 404 and "unknown method 'reboot_now'" in doc["error"]


async def test_broker_killed_mid_stream_loses_nothing(standin: Hub, tmp_path: Path) -> None:
    sender = can.Bus(interface="virtual", channel="iothub-kill")
    n = 0

    async def feed(count: int) -> None:
        nonlocal n
        for _ in range(count):
            send_engine(sender, n)
            n += 1
            await asyncio.sleep(0.005)

    started = time.time()
    async with running_agent(tmp_path, standin, "iothub-kill") as agent:
        await until(lambda: agent.sink.state()["link"] == "connected", what="connected")
        await feed(150)
        # What the hub acknowledged before the SIGKILL is in the broker's autosave, so the restored
        # broker does not deliver it again (that would be the stand-in's doing, not the agent's).
        await until(lambda: len(engine_speeds(standin, started)) >= 100, what="samples at the hub before the kill")
        acked = time.time()
        await until(lambda: saved_after(standin, acked), what="broker autosave after the hub's acks")
        await asyncio.to_thread(standin.broker.kill, signal.SIGKILL)
        await feed(150)  # collected while the hub is away: the store keeps it
        await until(lambda: agent.forwarder.status.state == "failing", what="uplink failing")
        await asyncio.to_thread(standin.broker.start)
        await feed(150)
        await until(lambda: len(engine_speeds(standin, started)) >= n, timeout=90, what="every sample at the hub")
        await until(lambda: agent.store.stats().batches == 0, what="store drained")
        stored = agent.store.stats().counters.get("stored_batches")
        reconciled = standin.responder.twin_gets
    sender.shutdown()
    assert engine_speeds(standin, started) == [1000 + i * 0.25 for i in range(n)], "each sample once, none lost"
    assert len(received_samples(standin, started)) == stored  # every batch id arrived (duplicates of an id collapse)
    assert reconciled >= 2  # the twin was fetched again after the reconnect


async def test_wrong_key_is_a_credential_error_with_slow_retries(standin: Hub, tmp_path: Path) -> None:
    # The stand-in refuses every connection, as IoT Hub refuses a SAS token signed with a wrong key.
    await asyncio.to_thread(standin.restart_broker, refuse_all=True)
    try:
        sender = can.Bus(interface="virtual", channel="iothub-badkey")
        async with running_agent(tmp_path, standin, "iothub-badkey", credential_retry_s=20) as agent:
            await until(lambda: agent.status()["buses"].get("pt", {}).get("state") == "up", what="bus open")
            send_engine(sender, 0)
            await until(lambda: agent.sink.state()["link"] == "credential_error", what="credential error state")
            st = agent.forwarder.status
            assert "rejected the credentials" in st.last_error
            assert agent.sink.state()["link_error"].startswith("authentication: ")  # the root cause, named
            assert st.backoff_s >= 20  # slower than the normal 1 s cap
            await until(lambda: agent.store.stats().batches >= 1, what="batch kept in the store")
        sender.shutdown()
    finally:
        await asyncio.to_thread(standin.restart_broker, refuse_all=False)
        await asyncio.to_thread(standin.responder.connected.wait, 20)


async def test_module_identity_through_edge_environment(standin: Hub, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    workload = WorkloadAPI(standin.certs["ca"].read_text(), b"module-key")
    for k, v in edge_environment(workload).items():
        monkeypatch.setenv(k, v)
    sender = can.Bus(interface="virtual", channel="iothub-edge")
    try:
        async with running_agent(tmp_path, standin, "iothub-edge", identity="edge",
                                 server_verification_cert=None) as agent:
            await until(lambda: agent.sink.state()["link"] == "connected", what="connected via edge environment")
            send_engine(sender, 0)
            msg = await until(lambda: standin.responder.telemetry[:1], what="module telemetry")
    finally:
        sender.shutdown()
        workload.close()
    assert msg[0].topic.startswith("devices/car-1/modules/vehicle-agent/messages/events/")
    assert msg[0].properties["$.on"] == "telemetry"
    assert any(c.startswith("/trust-bundle") for c in workload.calls)
    assert any(c.startswith("/modules/vehicle-agent/genid/gen1/sign") for c in workload.calls)


async def test_x509_device_certificate_with_an_encrypted_key(standin: Hub, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    """The x509 identity: the device certificate is the credential (its key encrypted, the pass phrase
    from the environment). The broker admits only clients presenting a certificate of its CA and
    knows them by the certificate's CN, as IoT Hub knows an x509 device by its certificate. A
    certificate of another CA is refused: the agent keeps its batches and retries."""
    phrase = "pass-phrase-of-the-device-key"
    device = make_device_cert(tmp_path / "device", standin.certs, "car-1", pass_phrase=phrase)
    rogue = make_device_cert(tmp_path / "rogue", make_certs(tmp_path / "rogue-ca"), "car-1")
    monkeypatch.delenv("VEHICLE_AGENT_IOTHUB_CONNECTION_STRING")
    monkeypatch.setenv("CAR_1_KEY_PASS", phrase)
    await asyncio.to_thread(standin.restart_broker, require_client_cert=True)
    sender = can.Bus(interface="virtual", channel="iothub-x509")
    try:
        async with running_agent(tmp_path / "rogue", standin, "iothub-x509", identity="x509", hostname=HUB,
                                 device_id="car-1", x509_cert_file=str(rogue["cert"]), x509_key_file=str(rogue["key"]),
                                 gateway_hostname="localhost") as agent:
            await until(lambda: agent.status()["buses"].get("pt", {}).get("state") == "up", what="bus open")
            send_engine(sender, 0)
            await until(lambda: agent.store.stats().batches >= 1, what="batch kept in the store")
            await until(lambda: agent.forwarder.status.consecutive_failures >= 2, what="refused connections")
            assert agent.sink.state()["link"] == "failing" and not standin.responder.telemetry
            assert "connect failed" in agent.forwarder.status.last_error
        async with running_agent(tmp_path, standin, "iothub-x509", identity="x509", hostname=HUB, device_id="car-1",
                                 x509_cert_file=str(device["cert"]), x509_key_file=str(device["key"]),
                                 x509_pass_phrase_env="CAR_1_KEY_PASS", gateway_hostname="localhost") as agent:
            await until(lambda: agent.sink.state()["link"] == "connected", what="connected with the certificate")
            send_engine(sender, 0)
            msg = await until(lambda: standin.responder.telemetry[:1], what="telemetry of the x509 device")
            await until(lambda: standin.responder.reported.get("agent"), what="reported properties")
            status = json.dumps(agent.status())
    finally:
        sender.shutdown()
        await asyncio.to_thread(standin.restart_broker)
        await asyncio.to_thread(standin.responder.connected.wait, 20)
    assert msg[0].topic.startswith("devices/car-1/messages/events/")
    assert engine_speeds(standin) == [1000.0]
    log = (standin.broker.folder / "mosquitto.log").read_text()
    assert "u'car-1'" in log, "the broker knew the client by its certificate's CN"
    out = capfd.readouterr()
    for text in (out.out + out.err, status, json.dumps(standin.responder.reported)):
        assert phrase not in text, "the key's pass phrase is never logged nor reported"


async def test_a_simulated_bus_is_marked_in_the_message_properties_and_batch_header(standin: Hub,
                                                                                    tmp_path: Path) -> None:
    base = _config(tmp_path, standin, "iothub-simulated")
    base["buses"][0]["simulate"] = True  # asked for: the built-in simulator drives the bus
    agent = Agent(build_config(base, base_dir=tmp_path), base=base)
    task = asyncio.create_task(agent.run())
    try:
        (msg,) = await until(lambda: standin.responder.telemetry[:1], what="telemetry of the simulated bus")
    finally:
        agent.stop.set()
        await asyncio.wait_for(task, 60)
    assert msg.properties["simulated"] == "true"
    header, samples = codec_by_content(msg.properties["$.ct"]).decode(msg.body)
    assert header["sim"] is True and samples
