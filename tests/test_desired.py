"""Desired state: validated as a whole, swapped live, acked per property, persisted for offline starts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import can
import cantools
import yaml

from agent.app import Agent
from agent.config import build_config
from tests.conftest import DATA, until


def _agent(tmp_path: Path, channel: str) -> tuple[Agent, dict]:
    base = {"vehicle_id": "car", "state_dir": str(tmp_path / "state"),
            "buses": [{"name": "pt", "interface": "virtual", "channel": channel, "databases": [str(DATA / "edge.dbc")]}],
            "collection": {"default": {"policy": "all"}}, "batching": {"max_age_s": 0.2}}
    return Agent(build_config(base, base_dir=tmp_path), base=base), base


def test_patch_validation_ack_and_stale(tmp_path: Path) -> None:
    agent, _ = _agent(tmp_path, "desired-unit")
    d = agent.desired
    ok = d.handle({"$version": 3, "collection": {"default": {"policy": "on_change"}}}, full=False)
    assert ok == {"collection": {"value": {"default": {"policy": "on_change"}}, "ac": 200, "av": 3, "ad": "applied"}}
    assert agent.cfg.collection.default.policy == "on_change"
    mixed = d.handle({"$version": 4, "batching": {"max_age_s": -1}, "log_level": "debug"}, full=False)
    assert mixed["batching"]["ac"] == 400 and "batching.max_age_s" in mixed["batching"]["ad"]
    assert mixed["log_level"] == {"value": "debug", "ac": 200, "av": 4, "ad": "applied"}  # per property
    assert agent.cfg.log_level == "debug" and agent.cfg.batching.max_age_s == 0.2
    stale = d.handle({"$version": 2, "log_level": "error"}, full=False)
    assert stale["log_level"]["ac"] == 400 and stale["log_level"]["ad"].startswith("stale: $version 2 is older")
    assert agent.cfg.log_level == "debug"
    denied = d.handle({"$version": 5, "vehicle_id": "other"}, full=False)
    assert denied["vehicle_id"]["ac"] == 400 and "not writable" in denied["vehicle_id"]["ad"]
    missing = d.handle({"$version": 6, "buses": [{"name": "pt", "databases": ["nope.dbc"]}]}, full=False)
    assert missing["buses"]["ac"] == 400 and "not found in databases_dir" in missing["buses"]["ad"]
    agent.store.close()


def test_persisted_desired_state_is_used_at_next_start(tmp_path: Path) -> None:
    agent, base = _agent(tmp_path, "desired-persist")
    agent.desired.handle({"$version": 7, "batching": {"max_samples": 123}}, full=True)
    agent.store.close()
    again = Agent(build_config(base, base_dir=tmp_path), base=base)
    assert again.cfg.batching.max_samples == 123 and again.desired.version == 7
    again.store.close()
    (tmp_path / "state" / "desired.json").write_text("{not json")
    third = Agent(build_config(base, base_dir=tmp_path), base=base)
    assert third.cfg.batching.max_samples == 20000
    third.store.close()


async def test_live_swap_changes_what_is_collected_without_losing_frames(tmp_path: Path) -> None:
    agent, _ = _agent(tmp_path, "desired-live")
    eng = cantools.database.load_file(DATA / "edge.dbc").get_message_by_name("EngineData")
    task = asyncio.create_task(agent.run())
    sender = can.Bus(interface="virtual", channel="desired-live")

    async def send(values: range) -> None:
        for i in values:
            sender.send(can.Message(arbitration_id=eng.frame_id, is_extended_id=False, data=eng.encode(
                {"EngineSpeed": 1000 + i, "CoolantTemp": 90, "Torque": 0, "Gear": 3})))
            if i % 10 == 0:
                await asyncio.sleep(0.01)

    try:
        await until(lambda: agent.status()["buses"].get("pt", {}).get("state") == "up", what="the bus open")
        await send(range(0, 100))
        await until(lambda: agent.counters["pt"].frames >= 100, what="the first 100 frames read")
        ack = agent.desired.handle({"$version": 2, "collection": {"signals": [
            {"match": "EngineSpeed", "policy": "exclude"}]}}, full=False)
        assert ack["collection"]["ac"] == 200
        await send(range(100, 200))
        await until(lambda: agent.counters["pt"].frames >= 200, what="every frame read")
    finally:
        sender.shutdown()
        agent.stop.set()
        await asyncio.wait_for(task, 30)
    rows = []
    for f in (tmp_path / "state" / "outbox").glob("*.jsonl"):
        rows += [yaml.safe_load(x) for x in f.read_text().splitlines()]
    speeds = sorted(r["value"] for r in rows if r["signal"] == "EngineSpeed")
    assert speeds == [1000 + i for i in range(100)]
    temps = [r for r in rows if r["signal"] == "CoolantTemp"]
    assert len(temps) == 200  # still collected before and after the swap: no frame dropped


def test_a_swap_reuses_parsed_databases_and_compiles_ids_as_they_appear(tmp_path: Path) -> None:
    """A config swap usually keeps its databases: they are not parsed again unless their bytes
    changed, and a collector compiles an id's decoding at its first frame, so a swap with a large
    database costs the policy lookup only."""
    from agent.config import build_config
    from agent.decode.database import load_databases
    from agent.model import Priority
    from agent.pipeline import build

    head = 'VERSION ""\nNS_ :\nBS_:\nBU_: ECU\n'
    dbc = tmp_path / "big.dbc"
    dbc.write_text(head + "".join(f'BO_ {256 + m} Msg{m}: 8 ECU\n SG_ Sig{m} : 0|16@1+ (0.5,0) [0|0] "" ECU\n'
                                  for m in range(300)))
    first = load_databases([dbc])
    assert load_databases([dbc]) is first, "unchanged: not parsed again"
    text = dbc.read_text()
    dbc.write_text(text.replace("(0.5,0)", "(0.7,0)", 1))  # same size, maybe the same mtime: new content
    assert load_databases([dbc]) is not first
    assert load_databases([dbc]).get_message_by_name("Msg0").get_signal_by_name("Sig0").scale == 0.7

    cfg = build_config({"buses": [{"name": "pt", "databases": [str(dbc)]}],
                        "collection": {"default": {"policy": "all"}}}, base_dir=tmp_path)
    pipeline = build(cfg, on_batch=lambda b: None)
    batcher, collector = pipeline.batcher, pipeline.collectors["pt"]
    assert len(collector.wanted_ids) == 300 and not collector.plans, "nothing compiled before frames arrive"
    collector.process([(1_700_000_000.0, 256 + 7, bytes([4, 0, 0, 0, 0, 0, 0, 0]), False, False)])
    assert set(collector.plans) == {256 + 7}
    assert batcher.open[Priority.normal].columns[("pt", "Msg7", "Sig7")][1] == [4]  # the raw integer column


def test_a_database_error_as_the_cloud_sees_it(tmp_path: Path) -> None:
    """The file's name within databases_dir (or its bare name outside), its line when known, a fixed reason."""
    from agent.decode import DatabaseError
    from agent.decode.database import NO_STRICT_HINT
    from agent.twin.desired import database_reason

    folder = tmp_path / "dbs"
    (folder / "sub").mkdir(parents=True)
    cases = [
        (DatabaseError(folder / "sub" / "a.dbc", "file not found"), "sub/a.dbc: file not found"),
        (DatabaseError(tmp_path / "elsewhere" / "b.dbc", "frame id 0x1 (X) is already defined in /x/a.dbc", 7),
         "b.dbc:7: a frame id defined in two of the bus's databases"),
        (DatabaseError(folder / "c.dbc", f"The signals A and B are overlapping ({NO_STRICT_HINT})", 3),
         "c.dbc:3: refused by cantools' strict checks; it loads with `strict: false` on the bus"),
        (DatabaseError(folder / "d.dbc", "Invalid syntax at line 2, column 1: 'SECRET text'", 0),
         "d.dbc: not a database cantools can read"),
    ]
    assert [database_reason(exc, folder) for exc, _ in cases] == [why for _, why in cases]


def test_documents_refused_whole_are_counted_and_logged(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    agent, _ = _agent(tmp_path, "desired-refused")
    with capture_logs() as logs:
        assert agent.desired.handle([1, 2], full=False) == {}
        acks = agent.desired.handle({"$version": "7", "log_level": "debug"}, full=False)
    assert acks == {"log_level": {"value": None, "ac": 400, "av": None,
                                  "ad": 'refused: "$version" must be a non-negative 64-bit integer'}}
    assert agent.desired.report() == {
        "desired_version": 0, "rejected_documents": 2, "rejected_properties": 0, "version_reset": None,
        "last_document": {"ac": 400, "av": None,
                          "ad": 'desired document refused: "$version" must be a non-negative 64-bit integer'}}
    assert agent.cfg.log_level == "info"
    refused = [(e["error"], e["version"], e["log_level"]) for e in logs if e["event"] == "desired_rejected"]
    assert refused == [("not an object", None, "warning"), ("no usable $version", None, "warning")]
    agent.store.close()


def test_a_cloud_bus_keeps_the_local_only_keys_of_the_local_bus_of_its_name(tmp_path: Path) -> None:
    """Local-only keys (replay, options, simulate) come from the file's bus of the same name; database names
    resolve in databases_dir relative to the config's folder."""
    (tmp_path / "dbs").mkdir()
    (tmp_path / "dbs" / "edge.dbc").write_bytes((DATA / "edge.dbc").read_bytes())
    base = {"vehicle_id": "car", "state_dir": str(tmp_path / "state"), "databases_dir": "dbs",
            "buses": [{"name": "pt", "interface": "virtual", "channel": "desired-local", "simulate": True,
                       "databases": [str(DATA / "edge.dbc")]}]}
    agent = Agent(build_config(base, base_dir=tmp_path), base=base)
    acks = agent.desired.handle({"$version": 2, "buses": [
        {"name": "pt", "interface": "virtual", "channel": "desired-local", "databases": ["edge.dbc"]},
        {"name": "body", "interface": "virtual", "channel": "desired-body", "databases": ["edge.dbc"]}]}, full=False)
    assert acks["buses"]["ac"] == 200, acks
    pt, body = agent.cfg.buses
    assert pt.simulate is True and body.simulate is None, "only the bus of the same name"
    assert pt.databases == [str((tmp_path / "dbs" / "edge.dbc").resolve())]
    agent.store.close()


def test_a_new_config_file_is_laid_under_the_applied_desired_state_or_refused_whole(tmp_path: Path) -> None:
    """SIGHUP's path: the new file with the applied desired state over it; an invalid file changes nothing."""
    from structlog.testing import capture_logs

    from agent.config import ConfigError

    agent, base = _agent(tmp_path, "desired-rebase")
    assert agent.desired.handle({"$version": 4, "log_level": "debug"}, full=False)["log_level"]["ac"] == 200
    with capture_logs() as logs:
        cfg = agent.desired.rebase({**base, "batching": {"max_age_s": 0.5}, "log_level": "error"})
    assert cfg.batching.max_age_s == 0.5 and cfg.log_level == "debug", "the desired state still wins"
    assert agent.cfg.batching.max_age_s == 0.5
    assert [e["desired_version"] for e in logs if e["event"] == "config_file_reloaded"] == [4]
    try:
        agent.desired.rebase({**base, "batching": {"max_age_s": -1}})
    except ConfigError as exc:
        assert "batching.max_age_s" in str(exc)
    else:
        raise AssertionError("an invalid file must be refused")
    assert agent.desired.base["batching"] == {"max_age_s": 0.5} and agent.cfg.batching.max_age_s == 0.5
    agent.store.close()


def test_a_saved_desired_state_is_checked_again_at_start(tmp_path: Path) -> None:
    """The saved state came from the cloud: at start each property passes the checks again; one that fails
    falls back to the local file (logged with the file, version and property); a damaged file is ignored."""
    import json

    from structlog.testing import capture_logs

    from agent.twin.desired import DesiredState

    _, base = _agent(tmp_path, "desired-reload")
    state = tmp_path / "state"
    path = state / "desired.json"

    def start(text: str) -> tuple[DesiredState, object, list[dict]]:
        path.write_text(text)
        desired = DesiredState(base, tmp_path, state, lambda cfg: None)
        with capture_logs() as logs:
            cfg = desired.load()
        return desired, cfg, [e for e in logs if e["event"].startswith("desired_state")]

    d, cfg, logs = start(json.dumps({"version": 7, "desired": {"log_level": "debug", "batching": {"max_age_s": -1}}}))
    assert cfg.log_level == "debug" and cfg.batching.max_age_s == 0.2
    assert d.version == 7 and d.desired == {"log_level": "debug"}
    assert "batching.max_age_s" in logs[0].pop("error")
    assert logs == [{"event": "desired_state_invalid", "log_level": "error", "file": str(path), "version": 7,
                     "property": "batching", "action": "this property falls back to the local config file"},
                    {"event": "desired_state_loaded", "log_level": "info", "version": 7, "keys": ["log_level"]}]
    d, cfg, logs = start("{not json")
    assert cfg is None and d.version == 0 and [(e["event"], e["file"], e["action"]) for e in logs] == [
        ("desired_state_unreadable", str(path), "starting with the local config file")]
