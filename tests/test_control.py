"""The control plane's one entry for remote documents, against hostile input (issue 13).

Hypothesis throws documents at the library entry (`ControlPlane.desired_document`, `.method`) of a
real agent with real SQLite and real database files: wrong types, sizes, depth, Unicode, huge
integers, NaN, duplicate keys, paths. After each, a valid change must be acked 200 and applied,
and what was persisted must load again.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.app import Agent
from agent.config import build_config
from agent.twin import guard
from agent.twin.desired import DesiredState
from tests.conftest import DATA
from tests.iothub_standin import wait_for

SECRET = "TOP-SECRET-LINE-4711"


def make_agent(tmp_path: Path, **extra: Any) -> Agent:
    dbs = tmp_path / "dbs"
    dbs.mkdir(exist_ok=True)
    (dbs / "edge.dbc").write_bytes((DATA / "edge.dbc").read_bytes())
    base = {"vehicle_id": "car", "state_dir": str(tmp_path / "state"), "databases_dir": str(dbs),
            "buses": [{"name": "pt", "interface": "virtual", "channel": f"ctl-{tmp_path.name}",
                       "databases": [str(dbs / "edge.dbc")]}],
            "batching": {"max_age_s": 0.2}, **extra}
    return Agent(build_config(base, base_dir=tmp_path), base=base)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Any:
    a = make_agent(tmp_path_factory.mktemp("ctl"))
    yield a
    a.store.close()


class Versions:
    n = 10

    def next(self) -> int:
        self.n += 1
        return self.n


VERSIONS = Versions()


def assert_valid_change_applies(agent: Agent) -> None:
    """The follow-up every hostile document gets: a valid change, acked 200 and running."""
    v = VERSIONS.next()
    samples = 1000 + v % 100_000
    acks = agent.control.desired_document({"$version": v, "batching": {"max_samples": samples}}, full=False)
    assert acks["batching"]["ac"] == 200, acks
    assert agent.cfg.batching.max_samples == samples
    saved = orjson.loads(agent.desired.path.read_bytes())
    assert saved["version"] == v and saved["desired"]["batching"]["max_samples"] == samples
    again = DesiredState(agent.desired.base, agent.desired.base_dir, agent.desired.path.parent, lambda cfg: None)
    assert again.load() is not None and again.desired == agent.desired.desired


def assert_acks_are_reportable(acks: dict[str, Any]) -> None:
    orjson.dumps(acks)  # what is reported must be plain JSON
    for key, a in acks.items():
        assert a["ac"] in (200, 400, 500) and isinstance(a["ad"], str) and len(a["ad"]) < 4000, (key, a)


# ------------------------------------------------------------------------------ strategies
big_ints = st.one_of(st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70),
                     st.integers(max_value=-(2**63) + 1, min_value=-(2**70)), st.just(10**30))
floats = st.floats(allow_nan=True, allow_infinity=True)
texts = st.text(st.characters(blacklist_categories=()), max_size=40)
scalars = st.one_of(st.none(), st.booleans(), big_ints, floats, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=20)
keys = st.one_of(st.sampled_from(["buses", "collection", "batching", "encoding", "log_level", "store", "sink",
                                  "vehicle_id", "state_dir", "databases_dir", "$version", "a.b", "x y", "$x"]), texts)
paths = st.sampled_from(["/etc/passwd", "../edge.dbc", "dbs/../../x.dbc", "/dev/zero", "edge.dbc/..", "",
                         "sub/../edge.dbc", "C:\\x.dbc", "edge.dbc\x00.txt", "~/x.dbc", "link-out.dbc", "fifo.dbc",
                         "missing.dbc", "edge.dbc"])


def deep(n: int, leaf: Any = 1) -> Any:
    doc = leaf
    for i in range(n):
        doc = [doc] if i % 2 else {"k": doc}
    return doc


@st.composite
def hostile_documents(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["random", "typed", "deep", "paths", "numbers", "not-object"]))
    if kind == "random":
        return draw(st.dictionaries(keys, json_values, max_size=6))
    if kind == "not-object":
        return draw(json_values)
    doc: dict[str, Any] = {"$version": draw(st.one_of(st.integers(-10, 2**40), st.just(10**30), st.just(2**64),
                                                     floats, texts, st.none(), st.booleans(),
                                                     st.just(VERSIONS.n + 1)))}
    if kind == "typed":
        doc[draw(keys)] = draw(json_values)
        doc["batching"] = draw(st.one_of(json_values, st.fixed_dictionaries({"max_samples": big_ints})))
    elif kind == "deep":
        doc[draw(keys)] = deep(draw(st.integers(10, 400)))
        doc["buses"] = [{"name": "pt", "databases": ["edge.dbc"], "options": {"x": deep(draw(st.integers(5, 300)))}}]
    elif kind == "paths":
        doc["buses"] = [{"name": "pt", "databases": [draw(paths)],
                         **draw(st.sampled_from([{}, {"replay": "/etc/shadow"}, {"options": {"config": "/etc/x"}},
                                                 {"channel": "/dev/ttyS0", "interface": "serial"}]))}]
    else:
        doc["store"] = {"max_bytes": draw(big_ints), "ttl_s": {draw(texts): draw(floats)}}
        doc["collection"] = {"signals": [{"match": draw(texts), "policy": "period", "period_ms": draw(big_ints),
                                          "deadband": draw(floats)}]}
    return doc


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["brackets", "braces", "bigint", "nan", "dupes", "binary", "surrogate", "huge",
                                 "valid-json"]))
    if kind == "brackets":
        return b"[" * draw(st.integers(13, 200_000))
    if kind == "braces":
        return b'{"a":' * draw(st.integers(13, 50_000)) + b"1" + b"}" * 10
    if kind == "bigint":
        return b'{"$version": 5, "batching": {"max_samples": 1' + b"0" * draw(st.integers(19, 10_000)) + b"}}"
    if kind == "nan":
        return b'{"$version": 5, "batching": {"max_age_s": ' + draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity",
                                                                                    b"1e999"])) + b"}}"
    if kind == "dupes":
        return b'{"$version": 5, "log_level": "debug", "log_level": "error"}'
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "surrogate":
        return b'{"$version": 5, "collection": {"signals": [{"match": "\\ud800"}]}}'
    if kind == "huge":
        return b'{"$version": 5, "x": "' + b"a" * (guard.MAX_DESIRED_BYTES + draw(st.integers(1, 1000))) + b'"}'
    return json.dumps(draw(hostile_documents()), allow_nan=True).encode()


# ------------------------------------------------------------------------------ properties
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=hostile_documents(), full=st.booleans())
def test_hostile_parsed_documents_never_wedge_and_a_valid_change_follows(agent: Agent, doc: Any, full: bool) -> None:
    acks = agent.control.desired_document(doc, full=full)
    assert_acks_are_reportable(acks)
    assert agent.desired.document["ac"] in (200, 400)
    for a in acks.values():
        assert "root:" not in a["ad"] and "TOP-SECRET" not in a["ad"]
    VERSIONS.n = max(VERSIONS.n, agent.desired.version)
    assert_valid_change_applies(agent)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=hostile_bytes())
def test_hostile_bytes_are_refused_whole_or_parsed_within_limits(agent: Agent, data: bytes) -> None:
    try:
        value = guard.parse(data)
    except guard.Rejected as exc:
        assert len(str(exc)) < 200 and "TOP-SECRET" not in str(exc)
    else:
        orjson.dumps(value)  # whatever parses is plain, storable JSON
    acks = agent.control.desired_document(data, full=True)
    assert_acks_are_reportable(acks)
    VERSIONS.n = max(VERSIONS.n, agent.desired.version)
    assert_valid_change_applies(agent)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(texts, st.sampled_from(["flush", "get_status", "set_log_level"])),
       payload=st.one_of(json_values, st.fixed_dictionaries({"level": json_values, "duration_s": st.one_of(
           big_ints, floats, json_values)}), st.binary(max_size=50), st.just(b"[" * 100_000)))
def test_hostile_method_calls_are_answered(agent: Agent, name: str, payload: Any) -> None:
    status, answer = agent.control.method(name, payload)
    assert status in (200, 400, 404)
    orjson.dumps(answer, default=str)


# ------------------------------------------------------------------------------ the listed cases
def test_listed_poisons_are_acked_400_and_the_agent_goes_on(agent: Agent) -> None:
    v = VERSIONS.next()
    acks = agent.control.desired_document({"$version": v, "batching": {"max_samples": 10**30},
                                           "log_level": "warning"}, full=False)
    assert acks["batching"]["ac"] == 400 and "64 bits" in acks["batching"]["ad"]
    assert acks["log_level"]["ac"] == 200 and agent.cfg.log_level == "warning"
    v = VERSIONS.next()
    acks = agent.control.desired_document({"$version": v, "buses": [
        {"name": "pt", "databases": ["edge.dbc"], "options": {"x": deep(300)}}]}, full=False)
    assert acks["buses"]["ac"] == 400 and "nested deeper" in acks["buses"]["ad"]
    agent.control.desired_document(b"[" * 100_000, full=True)
    assert agent.desired.document == {"ac": 400, "av": None,
                                      "ad": "desired document refused: 100000 bytes, more than the limit of 32768"}
    agent.control.desired_document(b"[" * 30_000, full=True)
    assert agent.desired.document["ad"] == "desired document refused: nested deeper than 12 levels"
    for bad, words in (({"max_bytes": 1}, "store.max_bytes"), ({"ttl_s": {"normal": -1}}, "store.ttl_s.normal"),
                       ({"max_batches": 1}, "store.max_batches")):
        acks = agent.control.desired_document({"$version": VERSIONS.next(), "store": bad}, full=False)
        assert acks["store"]["ac"] == 400 and words in acks["store"]["ad"], acks
    acks = agent.control.desired_document({"$version": -1, "log_level": "debug"}, full=False)
    assert acks == {"log_level": {"value": None, "ac": 400, "av": None,
                                  "ad": 'refused: "$version" must be a non-negative 64-bit integer'}}
    assert "non-negative 64-bit integer" in agent.desired.document["ad"]
    assert_valid_change_applies(agent)


def test_stale_patch_is_acked_stale_and_a_restarted_sequence_wins_at_connect(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    plane = agent.control
    assert plane.desired_document({"$version": 40, "log_level": "debug"}, full=False)["log_level"]["ac"] == 200
    stale = plane.desired_document({"$version": 39, "log_level": "error"}, full=False)
    assert stale["log_level"] == {"value": "error", "ac": 400, "av": 39,
                                  "ad": "stale: $version 39 is older than the applied 40"}
    assert agent.cfg.log_level == "debug"
    # The hub's sequence restarted (a re-created device): its twin at connect wins, and says so.
    acks = plane.desired_document({"$version": 2, "log_level": "warning"}, full=True, at_connect=True)
    assert acks["log_level"]["ac"] == 200 and agent.cfg.log_level == "warning"
    reset = plane.state()["version_reset"]
    assert reset["from"] == 40 and reset["to"] == 2
    assert plane.desired_document({"$version": 3, "log_level": "info"}, full=False)["log_level"]["ac"] == 200
    agent.store.close()


def test_a_leftover_invalid_key_never_blocks_later_changes(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    plane = agent.control
    acks = plane.desired_document({"$version": 5, "sink": {"type": "mqtt"}}, full=False)
    assert acks["sink"]["ac"] == 400 and "not writable" in acks["sink"]["ad"]
    # Offline, the operator changes batching; the hub keeps the rejected key. Reconnect: the full twin.
    twin = {"$version": 6, "sink": {"type": "mqtt"}, "batching": {"max_age_s": 7}}
    acks = plane.desired_document(twin, full=True, at_connect=True)
    assert acks["batching"]["ac"] == 200 and acks["sink"]["ac"] == 400
    assert agent.cfg.batching.max_age_s == 7 and "not writable" in acks["sink"]["ad"]
    assert "sink" not in acks["batching"]["ad"]
    # A key the full twin no longer has falls back to the local file.
    plane.desired_document({"$version": 7, "sink": {"type": "mqtt"}}, full=True, at_connect=True)
    assert agent.cfg.batching.max_age_s == 0.2
    agent.store.close()


def test_databases_are_confined_and_acks_never_quote_a_file(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    dbs = tmp_path / "dbs"
    outside = tmp_path / "outside.dbc"
    outside.write_text(f"VERSION \"\"\n{SECRET} garbage\n")
    (dbs / "bad.dbc").write_text(f"VERSION \"\"\nBO_ 1 M: 8 X\n {SECRET} nonsense here\n")
    (dbs / "link-out.dbc").symlink_to(outside)
    os.mkfifo(dbs / "fifo.dbc")
    (dbs / "dev.dbc").symlink_to("/dev/zero")
    cases = {str(outside): "only a file name", "../outside.dbc": "only a file name", "link-out.dbc": "leads out",
             "fifo.dbc": "not a regular file", "dev.dbc": "leads out", "nope.dbc": "not found in databases_dir",
             "/etc/passwd": "only a file name", "bad.dbc": "bad.dbc:3: not a database cantools can read"}
    for name, why in cases.items():
        acks = agent.control.desired_document({"$version": VERSIONS.next(), "buses": [
            {"name": "pt", "interface": "virtual", "databases": [name]}]}, full=False)
        ad = acks["buses"]["ad"]
        assert acks["buses"]["ac"] == 400 and why in ad, (name, ad)
        assert SECRET not in ad and "garbage" not in ad and "nonsense" not in ad
    for bus, why in (({"replay": "/etc/shadow"}, "buses[0].replay: not writable"),
                     ({"options": {"config_file": "/etc/x"}}, "buses[0].options: not writable"),
                     ({"interface": "serial", "channel": "/dev/ttyS0"}, "buses[0].channel: an interface name"),
                     ({"simulate": True}, "buses[0].simulate: not writable from the cloud (local only)")):
        acks = agent.control.desired_document({"$version": VERSIONS.next(), "buses": [
            {"name": "pt", "databases": ["edge.dbc"], **bus}]}, full=False)
        assert acks["buses"]["ac"] == 400 and why in acks["buses"]["ad"], acks
    ok = agent.control.desired_document({"$version": VERSIONS.next(), "buses": [
        {"name": "pt", "interface": "virtual", "channel": "ctl-x", "databases": ["edge.dbc"], "strict": False}]},
        full=False)
    assert ok["buses"]["ac"] == 200 and agent.cfg.buses[0].databases == [str((dbs / "edge.dbc").resolve())]
    agent.store.close()


def test_a_sloppy_database_from_the_cloud_loads_with_strict_false(tmp_path: Path) -> None:
    """The cloud may switch a bus to `strict: false` for an OEM file cantools only loads leniently:
    the desired path checks the databases the way the running agent will load them."""
    agent = make_agent(tmp_path)
    (tmp_path / "dbs" / "oem.dbc").write_bytes((DATA / "oem_sloppy.dbc").read_bytes())
    bus = {"name": "pt", "interface": "virtual", "channel": "ctl-sloppy", "databases": ["oem.dbc"]}
    strict = agent.control.desired_document({"$version": VERSIONS.next(), "buses": [bus]}, full=False)
    assert strict["buses"]["ac"] == 400 and "strict" in strict["buses"]["ad"], strict
    lenient = agent.control.desired_document({"$version": VERSIONS.next(), "buses": [{**bus, "strict": False}]},
                                             full=False)
    assert lenient["buses"]["ac"] == 200, lenient
    assert agent.cfg.buses[0].strict is False
    assert agent.cfg.buses[0].databases == [str((tmp_path / "dbs" / "oem.dbc").resolve())]
    agent.store.close()


def test_guard_limits() -> None:
    assert guard.parse(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert guard.parse(json.dumps(deep(11)).encode()) == deep(11)
    for data, why in ((json.dumps(deep(13)).encode(), "nested deeper than 12"),
                      (b'{"a": 9223372036854775808}', "64 bits"), (b'{"a": NaN}', "NaN"),
                      (b'{"a": 1, "a": 2}', "duplicate key 'a'"), (b'{"a": "\\udc00"}', "surrogate"),
                      (b"\xff\xfe", "not UTF-8"), (b"{", "not JSON at line 1"), (b'{"a": 1e400}', "double")):
        with pytest.raises(guard.Rejected, match=why):
            guard.parse(data)
    assert guard.parse(b'{"a": 9223372036854775807}')["a"] == 2**63 - 1
    with pytest.raises(guard.Rejected, match="NaN"):
        guard.check({"a": math.nan})
    with pytest.raises(guard.Rejected, match="more than the limit"):
        guard.check({"a": "x" * guard.MAX_DESIRED_BYTES})


def hostile_then_valid(hostile: Callable[[bytes], None], valid_change: Callable[[int], None],
                       send_frame: Callable[[int], None], speeds: Callable[[], list[float]]) -> None:
    """For the broker tests, in a worker thread while the agent runs: each hostile document, then a valid
    change that must be acked 200 and applied (`valid_change(version)` asserts it; versions start at
    2**41, above any a hostile body claims), then a frame that must arrive: telemetry keeps flowing."""
    count = {"n": 0}

    @settings(max_examples=8, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=hostile_bytes())
    def one(data: bytes) -> None:
        hostile(data)
        count["n"] += 1
        n = count["n"]
        valid_change(2**41 + n)

        def arrived() -> bool:
            send_frame(n)
            return 1000 + n * 0.25 in speeds()
        wait_for(arrived, 30, interval=0.5, what="telemetry after the document")

    one()


def test_reported_store_evictions_and_the_throttle_after_a_reconnect(tmp_path: Path) -> None:
    import asyncio

    from agent.model import Priority
    from agent.status.document import AgentInfo, ForwarderState, SinkStatus, StatusDocument, StoreStatus
    from agent.store import Store
    from agent.twin.reporter import Reporter
    from tests.test_store import make_batch

    with Store(tmp_path / "s.db", max_bytes=3000) as store:
        for i in range(1, 6):
            store.put(make_batch(i, Priority.low))
        status = StatusDocument(
            updated=0.0, agent=AgentInfo("1", 1, "host", 0.0, "car", 0), frames_per_s=1.0, buses={},
            pending_samples=0, batches_closed=0,
            store=StoreStatus.of(store.stats().as_dict(), path=str(store.path), error=None, spill={}, wal={}),
            sink=SinkStatus("file", ForwarderState("connected", None, None, 0, 0.0, 0)))
    sent: list[dict] = []

    async def publish(patch: dict) -> None:
        sent.append(patch)

    async def run() -> None:
        reporter = Reporter(lambda: status, publish, interval_s=3600)
        assert await reporter.publish_due()
        status.frames_per_s = 2.0
        reporter.reset()  # a reconnect
        assert not await reporter.publish_due(), "the throttle holds after a reconnect"

    asyncio.run(run())
    assert len(sent) == 1
    evictions = sent[0]["store"]["evictions"]
    assert evictions["low"] == {"batches": 2, "samples": 11 + 12} and evictions["high"]["batches"] == 0


def test_thousands_of_junk_keys_make_a_reportable_ack(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    doc = {"$version": 3, "log_level": "debug", **{f"junk{i}": i for i in range(2000)}, "bad.name": 1}
    acks = agent.control.desired_document(doc, full=False)
    assert acks["log_level"]["ac"] == 200 and agent.cfg.log_level == "debug"
    assert len(acks) == 1 + 16 and len(orjson.dumps(acks)) < 8192
    assert agent.desired.document["ad"] == ("received; 2001 of 2002 properties refused (1 with names that cannot "
                                            "be reported) (1984 more unknown properties not acked one by one)")
    agent.store.close()
