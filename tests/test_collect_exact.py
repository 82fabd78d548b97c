"""The collector keeps exactly the samples that cantools' decode plus each signal's filter would keep.

The collector takes shortcuts (generated code per message, skipping payloads whose wanted bits did
not change, raw integers in the columns, downsampled messages decoded only when a period closes);
none of them may change what a user receives. Every bundled DBC and the edge-case DBC of the tests
run with a mix of all policies over a simulated drive whose payloads are partly randomised, padded
or cut short, through the real batcher and the JSON codec, against the reference built from
`cantools.Database.decode_message` and `Filter.offer`.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import cantools
import pytest
from structlog.testing import capture_logs

from agent.batcher import Batcher
from agent.can.simulator import VehicleSimulator
from agent.codec import ColumnarCodec
from agent.collect.collector import Collector
from agent.collect.policy import make_filter, resolve_policy
from agent.config import BatchingConfig, CollectionConfig
from agent.decode import FrameDecoder
from agent.decode.fast import one_to_one, scaling_of
from agent.model import Batch

ROOT = Path(__file__).resolve().parent.parent
DBCS = sorted((ROOT / "config" / "dbc").glob("*.dbc")) + [ROOT / "tests" / "data" / "edge.dbc"]
# Scaling at the edges: wide signals with fractional factors (raws not one to one with values),
# factors so large that values overflow to inf, whole-number enum factors (int values), choices.
EXTREME = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 300 Wide: 8 ECU
 SG_ Wide50 : 0|50@1+ (0.1,-3) [0|0] "" ECU
 SG_ Small : 50|14@1- (0.5,0) [0|0] "" ECU
BO_ 301 Huge: 8 ECU
 SG_ Huge : 0|16@1+ (1.5E+305,0.5) [0|0] "" ECU
 SG_ Tiny : 16|16@1- (1E-300,0) [0|0] "" ECU
BO_ 303 BigEndian: 8 ECU
 SG_ BigEndian50 : 7|50@0- (0.001,100) [0|0] "" ECU
BO_ 304 Infinite: 8 ECU
 SG_ InfFactor : 0|16@1+ (1e999,0) [0|0] "" ECU
 SG_ InfOffset : 16|8@1+ (1,1e999) [0|0] "" ECU
BO_ 302 Enums: 8 ECU
 SG_ Doubled : 0|4@1+ (2,0) [0|0] "" ECU
 SG_ Mode : 8|3@1+ (1,0) [0|0] "" ECU
 SG_ Level : 16|8@1+ (1,-40) [0|0] "" ECU
VAL_ 302 Doubled 0 "off" 2 "low" 4 "high" ;
VAL_ 302 Mode 0 "park" 1 "reverse" 2 "neutral" 3 "drive" ;
"""
POLICIES = [
    {"policy": "all"}, {"policy": "on_change"}, {"policy": "on_change", "deadband": 0.5},
    {"policy": "min_interval", "min_interval_ms": 250}, {"policy": "period", "period_ms": 100},
    {"policy": "period", "period_ms": 300}, {"policy": "exclude"},
]
Frames = list[tuple[float, int, bytes, bool, bool]]


def _database(name: str) -> cantools.database.Database:
    if name == "extreme":
        return cantools.database.load_string(EXTREME, "dbc")
    return cantools.database.load_file(str(next(p for p in DBCS if p.name == name)))


def _collection(db: cantools.database.Database, rng: random.Random, whole_messages: bool,
                labels: bool) -> CollectionConfig:
    """A random policy per signal (or, with `whole_messages`, one per message: the common case)."""
    rules = []
    for m in db.messages:
        policy = rng.choice(POLICIES)
        for s in m.signals:
            rules.append({"match": f"{m.name}.{s.name}", **(policy if whole_messages else rng.choice(POLICIES))})
    return CollectionConfig.model_validate({"default": {"policy": "on_change"}, "signals": rules, "labels": labels})


def _frames(db: cantools.database.Database, rng: random.Random) -> Frames:
    """A simulated drive, with some payloads replaced by random bytes, padded (as CAN FD pads) or cut short."""
    out = []
    for f in VehicleSimulator(db, seed=rng.randrange(1000), start_t=1_700_000_000.0).frames_until(20.0):
        data, roll = f.data, rng.random()
        if roll < 0.2 or db.get_message_by_frame_id(f.id).frame_id in (300, 301, 302, 303, 304):
            data = rng.randbytes(len(data)) if rng.random() < 0.5 else data
        if roll < 0.03:
            data = data + bytes(rng.choice([1, 4, 8]))
        elif roll < 0.05:
            data = data[:rng.randrange(len(data))]
        out.append((f.t, f.id, data, len(data) > 8, False))
    return out


def _reference(db: cantools.database.Database, decoder: FrameDecoder, cfg: CollectionConfig, frames: Frames,
               flush_at: int) -> dict[tuple[str, str], list]:
    """cantools' decode, then each signal's own filter (`offer`), flushed at `flush_at` and at the end."""
    filters: dict[tuple[str, str], object] = {}
    out: dict[tuple[str, str], list] = {}

    def keep(key: tuple[str, str], emit: tuple[float, object]) -> None:
        value = decoder.by_id[db.get_message_by_name(key[0]).frame_id].label(key[1], emit[1]) if cfg.labels else emit[1]
        out.setdefault(key, []).append((emit[0], value))

    def flush() -> None:
        for key, f in filters.items():
            if f is not None and (e := f.flush()) is not None:
                keep(key, e)

    by_id = {m.frame_id: m for m in db.messages}
    for n, (t, fid, data, _fd, _err) in enumerate(frames):
        if n == flush_at:
            flush()
        m = by_id.get(fid)
        if m is None or len(data) < m.length:
            continue
        try:
            values = m.decode(data[:m.length], decode_choices=False)
        except Exception:  # noqa: BLE001 - an undefined multiplexer value: the collector counts an error
            continue
        for name, v in values.items():
            key = (m.name, name)
            if key not in filters:
                factory = make_filter(resolve_policy(cfg, m.name, name))
                filters[key] = factory() if factory else None
            f = filters[key]
            if f is not None and (e := f.offer(t, v)) is not None:
                keep(key, e)
    flush()
    return out


def _collected(db: cantools.database.Database, decoder: FrameDecoder, cfg: CollectionConfig, frames: Frames,
               flush_at: int, scaling: dict | None) -> dict[tuple[str, str], list]:
    """The collector on the same frames (in drains of 97), through the batcher and the columnar codec
    (µs timestamps; it carries NaN and infinities exactly, as JSON cannot)."""
    batches: list[Batch] = []
    codec = ColumnarCodec("us")
    batcher = Batcher(BatchingConfig(max_samples=200), codec, vehicle="v", on_batch=batches.append, scaling=scaling)
    collector = Collector("bus", decoder, cfg, batcher, scaling=scaling)
    for i in range(0, len(frames), 97):
        if i <= flush_at < i + 97:  # a flush between drains, as a config swap or the flush method does
            collector.process(frames[i:flush_at])
            collector.flush()
            collector.process(frames[flush_at:i + 97])
        else:
            collector.process(frames[i:i + 97])
    collector.flush()
    batcher.flush()
    got: dict[tuple[str, str], list] = {}
    for batch in batches:
        for s in codec.decode(batch.payload)[1]:
            got.setdefault((s.message, s.signal), []).append((s.t, s.value))
    return got


def _comparable(points: list) -> list:
    """Times to the µs tick the wire carries; NaN (unequal to itself) and infinities by name."""
    def finite(v: object) -> bool:
        return not isinstance(v, float) or math.isfinite(v)
    return [(math.floor(t * 1e6 + 0.5), v if finite(v) else repr(v), type(v).__name__) for t, v in points]


@pytest.mark.parametrize("labels", [False, True], ids=["numbers", "labels"])
@pytest.mark.parametrize("whole_messages", [True, False], ids=["per-message", "per-signal"])
@pytest.mark.parametrize("name", [p.name for p in DBCS] + ["extreme"])
def test_collector_keeps_what_cantools_and_the_filters_keep(name: str, whole_messages: bool, labels: bool) -> None:
    db = _database(name)
    decoder = FrameDecoder(db)
    rng = random.Random(f"{name}{whole_messages}{labels}")
    for run in range(3):
        cfg = _collection(db, rng, whole_messages, labels)
        frames = _frames(db, rng)
        flush_at = rng.randrange(len(frames))
        scaling = None if run == 2 else {(m.name, s.name): scaling_of(s) for m in db.messages for s in m.signals}
        got = _collected(db, decoder, cfg, frames, flush_at, scaling)
        expected = _reference(db, decoder, cfg, frames, flush_at)
        assert sum(map(len, expected.values())) > 500, "too little traffic to compare"
        assert got.keys() == expected.keys()
        for key, points in expected.items():
            assert _comparable(got[key]) == _comparable(points), key


def test_one_to_one_scaling() -> None:
    """Raw comparisons stand in for value comparisons only where distinct raws give distinct values."""
    db = cantools.database.load_string(EXTREME, "dbc")
    sig = {s.name: s for m in db.messages for s in m.signals}
    assert [name for name in sig if one_to_one(sig[name])] == ["Small", "Tiny", "Doubled", "Mode", "Level"]


def test_a_message_the_compiler_fails_on_is_decoded_with_cantools(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiling happens at an id's first frame, on the hot path: should it ever fail, the message is
    decoded with cantools (logged once) and keeps exactly the same samples; nothing is lost."""
    import agent.collect.collector as collector_module

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("compiler bug")

    db = _database("powertrain.dbc")
    decoder = FrameDecoder(db)
    rng = random.Random("fallback")
    cfg = _collection(db, rng, True, False)
    frames = _frames(db, rng)
    scaling = {(m.name, s.name): scaling_of(s) for m in db.messages for s in m.signals}
    monkeypatch.setattr(collector_module, "compile_step", broken)
    with capture_logs() as logs:
        got = _collected(db, decoder, cfg, frames, len(frames) // 2, scaling)
    expected = _reference(db, decoder, cfg, frames, len(frames) // 2)
    assert got.keys() == expected.keys() and sum(map(len, expected.values())) > 500
    failed = [e for e in logs if e["event"] == "compile_failed"]
    names = {m.frame_id: m.name for m in db.messages if not m.is_multiplexed()}  # compile_step: plain messages
    logged = {e["frame_id"]: e["message"] for e in failed}
    assert len(logged) == len(failed) and logged.items() <= names.items(), "once per id, named"
    assert {name for name, _ in expected} & set(names.values()) <= set(logged.values())
    assert all(e["bus"] == "bus" and e["error"] == "RuntimeError('compiler bug')" and e["log_level"] == "error"
               and e["action"] == "decoding this message with cantools" for e in failed)
    for key, points in expected.items():
        assert _comparable(got[key]) == _comparable(points), key
