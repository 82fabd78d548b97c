"""Remote database updates (issue 16): desired `databases` fetched over HTTPS (a real server with a
test CA), verified, swapped into a running agent live, rolled back on harm, kept across restarts;
acked over the local channel, a real mosquitto and the IoT Hub stand-in."""

# ruff: noqa: F811 - the fixtures (broker, hub, standin) are imported from the modules that define them

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import cantools
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.app import Agent
from agent.config import build_config
from agent.twin.local import read_reported, write_desired
from tests.conftest import DATA, ROOT, run_cli, until, wait_for
from tests.https_server import HttpsServer
from tests.mqtt_broker import Cloud, MqttBroker
from tests.test_iothub import Hub, _config, hub, standin  # noqa: F401 - the stand-in (module) and its per-test reset
from tests.test_mqtt import PASSWORD, broker, mqtt_cfg  # noqa: F401 - the module's mosquitto

pytestmark = pytest.mark.remote_dbc

SAS = "sv=2024-05-04&se=2030-01-01&sr=b&sp=r&sig=TOPSECRETSASSIGNATURE"
EDGE = (DATA / "edge.dbc").read_text()
ENGINE = cantools.database.load_file(DATA / "edge.dbc").get_message_by_name("EngineData")
# the next ECU release renames a signal; a DBC for another release moves EngineData to another id
RENAMED = EDGE.replace("EngineSpeed", "EngineRpm").encode()
REVS = EDGE.replace("EngineSpeed", "EngineRevs").encode()
WRONG_ECU = EDGE.replace("BO_ 291 ", "BO_ 292 ").replace("BO_ 291 10", "BO_ 292 10").replace("VAL_ 291", "VAL_ 292").encode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpsServer]:
    with HttpsServer(tmp_path / "tls") as s:
        yield s


def offer(server: HttpsServer, version: str, data: bytes, *, name: str = "edge.dbc", sha256: str | None = None,
          size: int | None = None) -> dict[str, Any]:
    """Host `data` and describe it as the desired `databases` document does (a SAS-like query)."""
    server.put(f"/{version}/{name}", data)
    return {"version": version, "files": [{"name": name, "url": server.url(f"/{version}/{name}?{SAS}"),
                                           "sha256": sha256 or hashlib.sha256(data).hexdigest(),
                                           "size": size or len(data)}]}


def base_config(tmp_path: Path, server: HttpsServer, channel: str, **remote: Any) -> dict[str, Any]:
    dbs = tmp_path / "dbs"
    dbs.mkdir(exist_ok=True)
    (dbs / "edge.dbc").write_text(EDGE)
    return {"vehicle_id": "car", "state_dir": str(tmp_path / "state"), "databases_dir": "dbs",
            "buses": [{"name": "pt", "interface": "virtual", "channel": channel, "databases": ["dbs/edge.dbc"]}],
            "collection": {"default": {"policy": "all"}}, "batching": {"max_age_s": 0.2},
            "remote_databases": {"ca_file": str(server.ca_file), "timeout_s": 5, "attempts": 2,
                                 "retry_max_s": 1, "watch_frames": 150, "watch_max_s": 120, **remote}}


def make_agent(tmp_path: Path, base: dict[str, Any]) -> Agent:
    return Agent(build_config(base, base_dir=tmp_path), base=base)


def send(bus: can.BusABC, values: range) -> None:
    for i in values:
        bus.send(can.Message(arbitration_id=ENGINE.frame_id, is_extended_id=False, data=ENGINE.encode(
            {"EngineSpeed": 1000 + i % 10_000, "CoolantTemp": 90, "Torque": 0, "Gear": 3})))


def outbox_rows(state: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for f in (state / "outbox").glob("*.jsonl"):
        rows += [json.loads(x) for x in f.read_text().splitlines()]
    return rows


class Driving:
    """A running in-process agent and a car sending EngineData on its virtual bus, counted."""

    def __init__(self, agent: Agent, channel: str) -> None:
        self.agent = agent
        self.bus = can.Bus(interface="virtual", channel=channel)
        self.sent = 0

    async def drive(self, frames: int) -> None:
        for _ in range(frames // 10):
            send(self.bus, range(self.sent, self.sent + 10))
            self.sent += 10
            await asyncio.sleep(0.01)

    async def drive_until(self, predicate: Any, what: str, timeout: float = 60) -> Any:
        """Frames flow while waiting: whatever the agent does meanwhile must not lose one."""
        end = asyncio.get_running_loop().time() + timeout
        while not (value := predicate()):
            assert asyncio.get_running_loop().time() < end, f"timed out waiting for {what}"
            await self.drive(10)
        return value

    async def all_counted(self) -> None:
        await until(lambda: self.agent.counters["pt"].frames >= self.sent, what="every frame read")
        assert self.agent.counters["pt"].frames == self.sent


async def running(agent: Agent, channel: str) -> tuple[asyncio.Task, Driving]:
    task = asyncio.create_task(agent.run())
    await until(lambda: agent.status()["buses"].get("pt", {}).get("state") == "up", what="the bus open")
    return task, Driving(agent, channel)


async def stopped(task: asyncio.Task, car: Driving) -> None:
    car.bus.shutdown()
    car.agent.stop.set()
    await asyncio.wait_for(task, 60)


def db_ack(agent: Agent) -> dict[str, Any]:
    return agent.desired.databases.ack or {}


async def test_a_version_swaps_in_live_without_losing_a_frame_and_stays_after_a_restart_offline(
        tmp_path: Path, server: HttpsServer) -> None:
    base = base_config(tmp_path, server, "rdb-good")
    agent = make_agent(tmp_path, base)
    task, car = await running(agent, "rdb-good")
    doc = offer(server, "2024.06-ecu17", RENAMED)
    try:
        await car.drive(100)
        acks = agent.desired.handle({"$version": 2, "databases": doc}, full=False)
        assert acks["databases"]["ac"] == 202 and acks["databases"]["ad"] == "version 2024.06-ecu17: downloading"
        await car.drive_until(lambda: db_ack(agent).get("ac") == 200, "the version active")
        await car.drive(100)
        await car.all_counted()
        pushed = await until(lambda: (read_reported(tmp_path / "state").get("databases") or {}).get("ac") == 200
                             and read_reported(tmp_path / "state"), what="the ack in the reported file")
    finally:
        await stopped(task, car)
    sha = hashlib.sha256(RENAMED).hexdigest()
    assert db_ack(agent) == {"ac": 200, "av": 2, "ad": "version 2024.06-ecu17 active", "value": {
        "version": "2024.06-ecu17", "files": [{"name": "edge.dbc", "url": server.url("/2024.06-ecu17/edge.dbc"),
                                               "sha256": sha, "size": len(RENAMED)}]}}
    assert pushed["databases"] == db_ack(agent)
    state = agent.status()["databases"]
    assert state["active_version"] == "2024.06-ecu17" and state["files"] == {"edge.dbc": sha}
    assert state["activations"] == 1 and state["downloads"] == 1 and state["downloaded_bytes"] == len(RENAMED)
    assert state["last_error"] is None
    rows = outbox_rows(tmp_path / "state")
    old = [r for r in rows if r["signal"] == "EngineSpeed"]
    new = [r for r in rows if r["signal"] == "EngineRpm"]
    assert old and new and len(old) + len(new) == car.sent, "every frame decoded by one version or the other"
    assert max(r["t"] for r in old) <= min(r["t"] for r in new), "one swap, between two frames"
    assert len([r for r in rows if r["signal"] == "CoolantTemp"]) == car.sent
    shown = run_cli("status", "--state-dir", str(tmp_path / "state")).stdout
    assert "databases: version 2024.06-ecu17 (watched), rollbacks 0, refused 0" in shown, shown
    everything = json.dumps(pushed) + (tmp_path / "state" / "status.json").read_text() + shown
    assert "TOPSECRET" not in everything and "sig=" not in everything

    server.__exit__()   # offline from here
    again = make_agent(tmp_path, base)
    assert Path(again.cfg.buses[0].databases[0]).read_bytes() == RENAMED
    assert again.status()["databases"]["active_version"] == "2024.06-ecu17"
    task, car = await running(again, "rdb-good")
    try:
        await car.drive(50)
        await car.all_counted()
    finally:
        await stopped(task, car)
    assert sum(r["signal"] == "EngineRpm" for r in outbox_rows(tmp_path / "state")) == len(new) + 50

    blob = tmp_path / "state" / "databases" / "blobs" / sha    # the disk damages the active version's file
    blob.write_bytes(RENAMED.replace(b"EngineRpm", b"EngineRPM"))
    third = make_agent(tmp_path, base)
    assert third.cfg.resolve(third.cfg.buses[0].databases[0]) == tmp_path / "dbs" / "edge.dbc", "the local file"
    state = third.status()["databases"]
    assert state["active_version"] is None and "files damaged on disk" in state["last_error"]
    third.store.close()


@pytest.mark.parametrize("wrong", ["sha256", "size"])
async def test_a_wrong_hash_or_size_is_refused_naming_the_file_and_nothing_changes(
        tmp_path: Path, server: HttpsServer, wrong: str) -> None:
    agent = make_agent(tmp_path, base_config(tmp_path, server, f"rdb-{wrong}"))
    task, car = await running(agent, f"rdb-{wrong}")
    lie = {"sha256": hashlib.sha256(b"another file").hexdigest()} if wrong == "sha256" else {"size": len(RENAMED) - 1}
    try:
        config_version, databases = agent.config_version, agent.cfg.buses[0].databases
        agent.desired.handle({"$version": 2, "databases": offer(server, "v2", RENAMED, **lie)}, full=False)
        await car.drive_until(lambda: db_ack(agent).get("ac") == 400, "the refusal")
        await car.drive(50)
        await car.all_counted()
    finally:
        await stopped(task, car)
    ack = db_ack(agent)
    assert ack["ad"].startswith("version v2 refused: edge.dbc") and f"{wrong} mismatch" in ack["ad"], ack
    assert agent.config_version == config_version and agent.cfg.buses[0].databases == databases
    state = agent.status()["databases"]
    assert state["active_version"] is None and state["refused_versions"] == 1 and "edge.dbc" in state["last_error"]
    blobs = tmp_path / "state" / "databases" / "blobs"
    assert [p for p in blobs.rglob("*") if p.is_file()] == [], "nothing kept of a file that is not the one named"
    assert all(r["signal"] != "EngineRpm" for r in outbox_rows(tmp_path / "state"))


async def test_an_unknown_id_jump_rolls_back_and_the_version_is_not_tried_again(
        tmp_path: Path, server: HttpsServer) -> None:
    agent = make_agent(tmp_path, base_config(tmp_path, server, "rdb-rollback"))
    task, car = await running(agent, "rdb-rollback")
    try:
        await car.drive(200)
        wrong = offer(server, "wrong-ecu", WRONG_ECU)
        agent.desired.handle({"$version": 2, "databases": wrong}, full=False)
        await car.drive_until(lambda: agent.status()["databases"]["rollbacks"] == 1, "the rollback")
        versions = tmp_path / "state" / "databases" / "versions"
        assert [p.name for p in versions.iterdir()] == [], "a rolled-back version is not kept"
        swapped_back = agent.counters["pt"].frames
        await car.drive(100)
        await car.all_counted()
        requests = len(server.requests)
        again = agent.desired.handle({"$version": 3, "databases": wrong}, full=False)
        assert again["databases"]["ac"] == 400 and "rolled back" in again["databases"]["ad"]
        good = agent.desired.handle({"$version": 4, "databases": offer(server, "right-ecu", RENAMED)}, full=False)
        assert good["databases"]["ac"] == 202
        await car.drive_until(lambda: db_ack(agent).get("ac") == 200, "the next version active")
        third = RENAMED + b"\n"
        agent.desired.handle({"$version": 5, "databases": offer(server, "third", third)}, full=False)
        await car.drive_until(lambda: db_ack(agent).get("av") == 5 and db_ack(agent)["ac"] == 200, "a third version")
    finally:
        await stopped(task, car)
    assert [r.path for r in server.requests[requests:]] == ["/right-ecu/edge.dbc", "/third/edge.dbc"], \
        "the rolled-back one not fetched again"
    store = tmp_path / "state" / "databases"
    assert sorted(p.name.split("-")[0] for p in (store / "versions").iterdir()) == ["right", "third"]
    assert sorted(p.name for p in (store / "blobs").iterdir() if p.is_file()) == sorted(
        hashlib.sha256(d).hexdigest() for d in (RENAMED, third)), "older versions' files removed"
    state = agent.status()["databases"]
    assert state["rollbacks"] == 1 and state["refused"] == ["wrong-ecu"] and state["active_version"] == "third"
    unknown = agent.counters["pt"].unknown_ids
    assert 0 < unknown < swapped_back, "unknown ids only while the wrong version was live"
    rows = outbox_rows(tmp_path / "state")
    assert len([r for r in rows if r["signal"] == "EngineSpeed"]) >= 100, "the local file decodes again"


async def test_during_the_watch_the_kernel_filter_passes_the_ids_the_new_files_dropped(
        tmp_path: Path, server: HttpsServer) -> None:
    """On SocketCAN the receive filter passes only wanted ids: without the ids the previous files knew,
    a DBC for another ECU release would show no unknown ids at all (the interface is missing here, so
    the raw source's filter set is what is checked; tools/vcan-tests.sh has the kernel)."""
    base = base_config(tmp_path, server, "rdbmiss0", watch_max_s=1)
    base["buses"][0]["interface"] = "socketcan"
    agent = make_agent(tmp_path, base)
    task = asyncio.create_task(agent.run())
    try:
        source = await until(lambda: agent.sources.get("pt"), what="the raw source")
        assert ENGINE.frame_id in source.wanted and 292 not in source.wanted
        agent.desired.handle({"$version": 2, "databases": offer(server, "wrong-ecu", WRONG_ECU)}, full=False)
        await until(lambda: db_ack(agent).get("ac") == 200, what="the version active")
        assert {ENGINE.frame_id, 292} <= source.wanted, "the dropped id still reaches the collector, as unknown"
        await until(lambda: agent.status()["databases"]["known_good_version"] == "wrong-ecu",
                    what="the watch over (no traffic: after watch_max_s)")
        assert 292 in source.wanted and ENGINE.frame_id not in source.wanted
        saved = json.loads((tmp_path / "state" / "databases" / "state.json").read_text())
        assert saved["watch_ids"] == {}, "a restart after the watch passes the policy's ids alone"
    finally:
        agent.stop.set()
        await asyncio.wait_for(task, 60)


def test_a_restart_during_the_watch_keeps_the_ids_the_previous_files_knew_in_the_kernel_filter(
        tmp_path: Path, server: HttpsServer) -> None:
    """The filter set of the test above, across a real restart of the agent process during the watch:
    the version is still on probation, so its filter passes the dropped id again (it passed only the
    new files' ids: a DBC for another ECU release restarted into a watch that could not see it)."""
    base = base_config(tmp_path, server, "rdbmiss1", watch_max_s=600)
    base["buses"][0]["interface"] = "socketcan"
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(base))
    state = tmp_path / "state"
    write_desired(state, {"$version": 2, "databases": offer(server, "wrong-ecu", WRONG_ECU)})
    new_ids = {m.frame_id for m in cantools.database.load_string(WRONG_ECU.decode()).messages}
    assert ENGINE.frame_id not in new_ids

    def filter_ids(proc: subprocess.Popen) -> int | None:
        """The bus's filter size once the process runs the version on probation."""
        try:
            doc = json.loads((state / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        db = doc["databases"]
        ok = doc["agent"]["pid"] == proc.pid and db["active_version"] == "wrong-ecu" and db["watching"]
        return doc["buses"]["pt"].get("filter_ids") if ok else None

    for run in ("first", "restarted"):
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--no-progress"],
                                cwd=ROOT, env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda p=proc: filter_ids(p) == len(new_ids) + 1, timeout=90,
                     what=f"{run}: the filter passing the new files' ids and the one they dropped")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        saved = json.loads((state / "databases" / "state.json").read_text())
        assert saved["watch_ids"] == {"pt": [ENGINE.frame_id]}, saved
    assert [r.path for r in server.requests] == ["/wrong-ecu/edge.dbc"], "the restart used the version on disk"


async def test_hostile_files_never_stall_collection(tmp_path: Path, server: HttpsServer) -> None:
    agent = make_agent(tmp_path, base_config(tmp_path, server, "rdb-hostile", parse_timeout_s=5))
    task, car = await running(agent, "rdb-hostile")
    garbage = hashlib.sha256(b"x").digest() * 100_000            # 3.2 MB of binary
    bomb = ("VERSION \"\"\n\nBU_: ECU\n" + "".join(
        f"BO_ {0x80000000 + i} M{i}: 8 ECU\n SG_ S{i} : 0|8@1+ (1,0) [0|255] \"\" ECU\n" for i in range(1, 120_000))).encode()
    slow = RENAMED + b" " * 300_000
    try:
        too_big = agent.desired.handle({"$version": 2, "databases": offer(server, "huge", RENAMED, size=2**40)},
                                       full=False)
        assert too_big["databases"]["ac"] == 400 and "databases.files[0].size" in too_big["databases"]["ad"]
        for version, data, why in (("binary", garbage, "edge.dbc:1: not a database cantools can read"),
                                   ("bomb", bomb, "parsing took longer than 5 s")):
            n = {"binary": 3, "bomb": 4}[version]
            agent.desired.handle({"$version": n, "databases": offer(server, version, data)}, full=False)
            await car.drive_until(lambda n=n: db_ack(agent).get("av") == n and db_ack(agent)["ac"] == 400,
                                  f"{version} refused", timeout=120)
            assert why in db_ack(agent)["ad"], db_ack(agent)
        server.behave("/slow/edge.dbc", bytes_per_s=100_000)
        agent.desired.handle({"$version": 5, "databases": offer(server, "slow", slow)}, full=False)
        before = agent.counters["pt"].frames
        await car.drive_until(lambda: agent.status()["databases"]["state"] == "downloading", "the download")
        await car.drive(200)
        await car.all_counted()    # while the download runs
        assert agent.status()["databases"]["state"] == "downloading" and agent.counters["pt"].frames >= before + 200
        await car.drive_until(lambda: db_ack(agent).get("ac") == 200, "the slow version active", timeout=60)
        await car.all_counted()
    finally:
        await stopped(task, car)
    assert agent.status()["databases"]["refused_versions"] == 2
    rows = outbox_rows(tmp_path / "state")
    assert len([r for r in rows if r["signal"] == "CoolantTemp"]) == car.sent


async def test_a_server_trickling_its_headers_costs_one_attempt_and_collection_goes_on(
        tmp_path: Path, server: HttpsServer) -> None:
    """The file server sends its response's headers a byte at a time: each attempt ends at
    deadline_s (it waited for as long as the server liked), the round fails and is retried, frames
    are collected meanwhile, and the version arrives once the server answers properly."""
    agent = make_agent(tmp_path, base_config(tmp_path, server, "rdb-slowhead", deadline_s=1))
    task, car = await running(agent, "rdb-slowhead")
    server.behave("/slowhead/edge.dbc", header_bytes_per_s=20)
    try:
        agent.desired.handle({"$version": 2, "databases": offer(server, "slowhead", RENAMED)}, full=False)
        ack = await car.drive_until(lambda: "download failed" in db_ack(agent).get("ad", "") and db_ack(agent),
                                    "a failed round")
        assert ack["ac"] == 202 and "edge.dbc: " in ack["ad"] and "not complete within 1 s" in ack["ad"], ack
        await car.drive(100)
        await car.all_counted()
        server.behave("/slowhead/edge.dbc")
        await car.drive_until(lambda: db_ack(agent).get("ac") == 200, "the version active")
        await car.all_counted()
    finally:
        await stopped(task, car)
    state = agent.status()["databases"]
    assert state["download_failures"] >= 1 and state["active_version"] == "slowhead" and state["downloads"] == 1


async def test_a_newer_version_cancels_the_older_download_and_only_the_newest_is_swapped_in(
        tmp_path: Path, server: HttpsServer) -> None:
    """The cloud sends v2 while v1 (3 MB at 100 KB/s: 30 s) is downloading: v1's download stops at
    once (the vehicle's cellular data), its partial file is removed (v2 does not have that file), and
    v1 is never swapped in; v2 is refused (a wrong hash), then v3 becomes active."""
    agent = make_agent(tmp_path, base_config(tmp_path, server, "rdb-supersede"))
    task, car = await running(agent, "rdb-supersede")
    old = RENAMED + b" " * 3_000_000
    server.behave("/old/edge.dbc", bytes_per_s=100_000)
    blobs = tmp_path / "state" / "databases" / "blobs"
    partial = blobs / ".partial" / hashlib.sha256(old).hexdigest()
    try:
        agent.desired.handle({"$version": 2, "databases": offer(server, "old", old)}, full=False)
        await car.drive_until(lambda: partial.exists() and partial.stat().st_size > 100_000,
                              "part of the old version downloaded")
        wrong = offer(server, "wrong", REVS, sha256=hashlib.sha256(b"another file").hexdigest())
        acks = agent.desired.handle({"$version": 3, "databases": wrong}, full=False)
        assert acks["databases"]["ac"] == 202, acks
        assert acks["databases"]["ad"] == "version wrong: downloading; version old superseded", acks
        await car.drive_until(lambda: db_ack(agent).get("ac") == 400, "the wrong version refused")
        assert db_ack(agent)["av"] == 3 and db_ack(agent)["ad"].startswith("version wrong refused: edge.dbc")
        assert not partial.exists(), "the superseded download's partial file removed (no version wants it)"
        assert [p for p in blobs.rglob("*") if p.is_file()] == [], "nothing kept of either"
        assert agent.status()["databases"]["activations"] == 0
        agent.desired.handle({"$version": 4, "databases": offer(server, "new", REVS)}, full=False)
        await car.drive_until(lambda: db_ack(agent).get("ac") == 200, "the newest version active")
        await car.drive(100)
        await car.all_counted()
    finally:
        await stopped(task, car)
    assert db_ack(agent)["av"] == 4 and db_ack(agent)["ad"] == "version new active"
    fetched = [r for r in server.requests if r.path == "/old/edge.dbc"]
    assert len(fetched) == 1 and fetched[0].sent < len(old) // 2, "the older download stopped, not retried"
    state = agent.status()["databases"]
    assert state["active_version"] == "new" and state["activations"] == 1 and state["superseded_versions"] == 1
    assert state["refused_versions"] == 1 and state["download_failures"] == 0 and state["downloads"] == 1
    rows = outbox_rows(tmp_path / "state")
    assert not [r for r in rows if r["signal"] == "EngineRpm"], "the superseded version never decoded a frame"
    assert len([r for r in rows if r["signal"] in ("EngineSpeed", "EngineRevs")]) == car.sent
    assert [r for r in rows if r["signal"] == "EngineRevs"]


async def test_a_superseded_download_of_a_file_the_newer_version_also_has_resumes(
        tmp_path: Path, server: HttpsServer) -> None:
    """Files are named by their hash: when v2 has the file v1 was fetching, the bytes already here
    are kept and v2 asks only for the rest."""
    agent = make_agent(tmp_path, base_config(tmp_path, server, "rdb-keep"))
    task, car = await running(agent, "rdb-keep")
    big = RENAMED + b" " * 3_000_000
    server.behave("/first/edge.dbc", bytes_per_s=100_000)
    partial = tmp_path / "state" / "databases" / "blobs" / ".partial" / hashlib.sha256(big).hexdigest()
    try:
        agent.desired.handle({"$version": 2, "databases": offer(server, "first", big)}, full=False)
        await car.drive_until(lambda: partial.exists() and partial.stat().st_size > 100_000,
                              "part of the first version downloaded")
        acks = agent.desired.handle({"$version": 3, "databases": offer(server, "second", big)}, full=False)
        assert acks["databases"]["ad"] == "version second: downloading; version first superseded", acks
        await car.drive_until(lambda: db_ack(agent).get("ac") == 200, "the second version active")
        await car.all_counted()
    finally:
        await stopped(task, car)
    assert db_ack(agent)["ad"] == "version second active"
    first, second = ([r for r in server.requests if r.path == f"/{v}/edge.dbc"] for v in ("first", "second"))
    assert len(first) == 1 and len(second) == 1
    kept = int(second[0].range.removeprefix("bytes=").removesuffix("-")) if second[0].range else 0
    assert kept > 0 and second[0].status == 206 and second[0].sent == len(big) - kept, second
    assert first[0].sent < len(big) // 2
    state = agent.status()["databases"]
    assert state["activations"] == 1 and state["superseded_versions"] == 1 and state["active_version"] == "second"


def _slow_broken_dbc(messages: int = 6000) -> bytes:
    """A DBC that takes cantools seconds to read and is refused at its end (a standard id beyond 11 bits)."""
    lines = ['VERSION ""', "", "NS_ :", "", "BS_:", "", "BU_: ECU", ""]
    for m in range(messages):
        lines += [f"BO_ {m + 1} M{m}: 8 ECU",
                  *(f' SG_ S{m}_{s} : {s * 8}|8@1+ (1,0) [0|255] "" ECU' for s in range(8)), ""]
    return "\n".join(lines).encode()


async def test_a_version_superseded_while_its_files_are_checked_is_neither_acked_nor_refused(
        tmp_path: Path, server: HttpsServer) -> None:
    """v2 is downloaded and being parsed (seconds: a large DBC, broken at its end) when the cloud sends
    v3: what v2's check finds is not said. The ack stays v3's (it said 'version v2 refused' while v3 was
    downloading), v2 is not counted refused nor remembered as refused, and v3 becomes active."""
    agent = make_agent(tmp_path, base_config(tmp_path, server, "rdb-checked"))
    task, car = await running(agent, "rdb-checked")
    newest = REVS + b" " * 300_000
    server.behave("/v3/edge.dbc", bytes_per_s=100_000)   # still downloading when v2's check ends
    partial = tmp_path / "state" / "databases" / "blobs" / ".partial" / hashlib.sha256(newest).hexdigest()
    try:
        agent.desired.handle({"$version": 2, "databases": offer(server, "v2", _slow_broken_dbc())}, full=False)
        await car.drive_until(lambda: agent.desired.databases.phase == "checking", "v2's files checked", timeout=120)
        acks = agent.desired.handle({"$version": 3, "databases": offer(server, "v3", newest)}, full=False)
        assert acks["databases"]["ad"] == "version v3: downloading; version v2 superseded", acks
        await car.drive_until(lambda: partial.exists(), "v3 downloading after v2's check", timeout=120)
        assert db_ack(agent)["av"] == 3 and db_ack(agent)["ac"] == 202, db_ack(agent)
        await car.drive_until(lambda: db_ack(agent).get("ac") == 200, "v3 active", timeout=120)
        await car.all_counted()
    finally:
        await stopped(task, car)
    assert db_ack(agent)["av"] == 3 and db_ack(agent)["ad"] == "version v3 active"
    state = agent.status()["databases"]
    assert state["refused_versions"] == 0 and state["superseded_versions"] == 1 and state["active_version"] == "v3"
    saved = json.loads((tmp_path / "state" / "databases" / "state.json").read_text())
    assert saved["refused"] == {}, saved


def test_a_kill_mid_download_resumes_after_the_restart(tmp_path: Path, server: HttpsServer) -> None:
    base = base_config(tmp_path, server, "rdb-kill")
    base["buses"][0]["simulate"] = True
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(base))
    data = RENAMED + b" " * 2_000_000
    server.behave("/big/edge.dbc", bytes_per_s=300_000)
    doc = offer(server, "big", data)
    state = tmp_path / "state"
    write_desired(state, {"$version": 2, "databases": doc})
    partial = state / "databases" / "blobs" / ".partial" / hashlib.sha256(data).hexdigest()

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--no-progress"],
                                cwd=ROOT, env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    proc = start()
    try:
        wait_for(lambda: partial.exists() and partial.stat().st_size > 200_000, timeout=90, what="half a download")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    kept = partial.stat().st_size
    assert 0 < kept < len(data)
    server.behave("/big/edge.dbc")
    proc = start()
    try:
        ack = wait_for(lambda: (read_reported(state).get("databases") or {}).get("ac") == 200
                       and read_reported(state)["databases"], timeout=90, what="the version active after the restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert ack["ad"] == "version big active"
    resumed = server.requests[-1]
    assert resumed.range == f"bytes={kept}-" and resumed.status == 206 and resumed.sent == len(data) - kept
    assert "TOPSECRET" not in err


# ------------------------------------------------------------------------------------------ cloud channels
@pytest.mark.mqtt
async def test_over_mqtt_the_ack_and_the_reported_state(tmp_path: Path, server: HttpsServer, broker: MqttBroker,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEHICLE_AGENT_MQTT_PASSWORD", PASSWORD)
    cloud = Cloud(broker, "fleet/rdb-mqtt", username="cloud", password="cloud-pass")
    base = {**base_config(tmp_path, server, "rdb-mqtt"),
            "sink": {"type": "mqtt", "retry_initial_s": 0.2, "retry_max_s": 1.0,
                     "mqtt": mqtt_cfg(broker, cloud)}}
    base["vehicle_id"] = "rdb-mqtt"
    agent = make_agent(tmp_path, base)
    task, car = await running(agent, "rdb-mqtt")
    try:
        await until(lambda: agent.sink.state()["connected"], what="connected")
        cloud.publish("twin/desired", {"$version": 5, "databases": offer(server, "v5", RENAMED)}, retain=True)
        ack = await car.drive_until(lambda: (cloud.reported().get("databases") or {}).get("ac") == 200
                                    and cloud.reported()["databases"], "the ack over MQTT")
        state = await until(lambda: (cloud.reported().get("database_state") or {}).get("active_version") == "v5"
                            and cloud.reported()["database_state"], what="the reported state")
        await car.all_counted()
    finally:
        cloud.publish("twin/desired", b"", retain=True)
        cloud.stop()
        await stopped(task, car)
    assert ack["av"] == 5 and ack["ad"] == "version v5 active"
    assert state["files"] == {"edge.dbc": hashlib.sha256(RENAMED).hexdigest()}
    assert "TOPSECRET" not in json.dumps(cloud.reported())


@pytest.mark.iothub
async def test_over_the_iothub_twin_the_ack_and_the_reported_state(tmp_path: Path, server: HttpsServer,
                                                                   standin: Hub) -> None:
    r = standin.responder
    base = {**_config(tmp_path, standin, "rdb-iothub"), **{k: v for k, v in base_config(tmp_path, server, "rdb-iothub").items()
                                                         if k in ("databases_dir", "remote_databases", "buses")}}
    agent = make_agent(tmp_path, base)
    task, car = await running(agent, "rdb-iothub")
    try:
        await until(lambda: agent.sink.state()["link"] == "connected" and r.twin_gets, what="connected")
        v = r.push_desired({"databases": offer(server, "2024.7", RENAMED)})
        ack = await car.drive_until(lambda: next((a for a in r.acks("databases") if a["av"] == v and a["ac"] == 200),
                                                 None), "the 200 ack in the twin")
        await car.all_counted()
        await until(lambda: any((p.get("database_state") or {}).get("active_version") == "2024.7"
                                for p in r.reported_patches), what="the reported state")
    finally:
        await stopped(task, car)
    assert [a["ac"] for a in r.acks("databases") if a["av"] == v][:1] == [202], "accepted first, then applied"
    assert ack["ad"] == "version 2024.7 active"
    assert "TOPSECRET" not in json.dumps(r.reported_patches)


# ------------------------------------------------------------------------------------------ the document
JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False)
                    | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FILE = st.fixed_dictionaries({
    "name": st.sampled_from(["a.dbc", "b/c.kcd", "a.dbc/d.dbc", "../x.dbc", "/abs.dbc", "x.txt", "", 7]),
    "url": st.sampled_from([f"https://h.example/f.dbc?{SAS}", f"http://h/f.dbc?{SAS}", f"https://u:pw@h/x?{SAS}",
                            "nope", f"https://[::1/x?{SAS}", None]),
    "sha256": st.sampled_from(["0" * 64, "A" * 64, "0" * 63, 5]),
    "size": st.sampled_from([1, 0, -1, 2**26, 2**26 + 1, True, 1.5, "9"]),
}, optional={"extra": JSON})


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, st.fixed_dictionaries({"version": st.sampled_from(["v1", "", "..", "a/b", "x" * 65, 3]),
                                              "files": st.lists(FILE, max_size=3)})))
def test_any_databases_value_is_a_document_or_a_refusal_that_never_shows_a_secret(value: Any) -> None:
    from agent.remotedb.document import parse_document, redacted_value

    try:
        doc = parse_document(value)
    except ValueError as exc:
        assert all(part.startswith("databases") for part in str(exc).split("; ")), str(exc)
        assert "TOPSECRET" not in str(exc) and "pw" not in str(exc)
        assert redacted_value(value) is None
        return
    shown = json.dumps(redacted_value(value))
    assert "TOPSECRET" not in shown and "pw@" not in shown and "?" not in shown
    assert all(f.url.startswith("https://") and f.size > 0 and len(f.sha256) == 64 for f in doc.files)
    assert "/" not in doc.key and not doc.key.startswith(".")
    names = [f.name for f in doc.files]   # laid out as a folder: no name is a file and another's folder
    assert not any(m.startswith(n + "/") for n in names for m in names)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
def test_a_damaged_state_file_means_the_local_files(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    from agent.remotedb.versions import Versions

    root = tmp_path_factory.mktemp("st")
    (root / "state.json").write_bytes(raw)
    state = Versions(root).load()
    assert state.active is None and state.known_good is None


@settings(max_examples=200, deadline=None)
@given(st.one_of(JSON, st.dictionaries(st.text(max_size=5), st.lists(st.integers(-5, 2**30) | st.booleans()
                                                                     | st.floats() | st.text(max_size=3)))))
def test_saved_watch_ids_are_can_ids_or_dropped(tmp_path_factory: pytest.TempPathFactory, raw: Any) -> None:
    """A restart during a watch passes the saved ids to the kernel filter: whatever state.json holds
    there loads as bus -> valid CAN ids (or nothing), never an error."""
    from agent.remotedb.versions import Versions

    root = tmp_path_factory.mktemp("st")
    (root / "state.json").write_bytes(json.dumps({"watch_ids": raw}).encode())
    state = Versions(root).load()
    ids = state.watch_ids
    assert all(isinstance(b, str) and all(type(i) is int and 0 <= i <= 0x1FFFFFFF for i in v) for b, v in ids.items())
    if isinstance(raw, dict) and state.last_error is None:   # (not JSON the guard reads, e.g. NaN: nothing)
        assert set(ids) == {b for b, v in raw.items() if isinstance(v, list)}


def test_a_name_that_is_the_folder_of_another_is_refused() -> None:
    """`a.dbc` and `a.dbc/d.dbc` passed the document and failed laying out the version's folder (an
    OSError out of the updater task, restarted on the same target forever with the ack left at 202)."""
    from agent.remotedb.document import parse_document

    files = [{"name": name, "url": f"https://h.example/{i}?{SAS}", "sha256": f"{i}" * 64, "size": 10}
             for i, name in enumerate(["a.dbc", "a.dbc/d.dbc"])]
    for order in (files, files[::-1]):
        with pytest.raises(ValueError, match=r"databases.*files: a\.dbc is both a file and the folder of another"):
            parse_document({"version": "v1", "files": order})
