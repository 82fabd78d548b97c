"""The collector keeps exactly the samples that cantools' decode plus each signal's filter would keep.

The collector takes shortcuts (generated code per message, skipping payloads whose wanted bits did
not change, raw integers in the columns, downsampled messages decoded only when a period closes);
none of them may change what a user receives. Every bundled DBC and the edge-case DBC of the tests
run with a mix of all policies over a simulated drive whose payloads are partly randomised, padded
or cut short, through the real batcher and the JSON codec, against the reference built from
`cantools.Database.decode_message` and `Filter.offer`.
"""

from __future__ import annotations

import random
from pathlib import Path

import cantools
import pytest

from agent.batcher import Batcher
from agent.codec import JsonCodec
from agent.collect.collector import Collector
from agent.collect.policy import make_filter, resolve_policy
from agent.config import BatchingConfig, CollectionConfig
from agent.can.simulator import VehicleSimulator
from agent.decode import FrameDecoder
from agent.decode.fast import scaling_of
from agent.model import Batch

ROOT = Path(__file__).resolve().parent.parent
DBCS = sorted((ROOT / "config" / "dbc").glob("*.dbc")) + [ROOT / "tests" / "data" / "edge.dbc"]
POLICIES = [
    {"policy": "all"}, {"policy": "on_change"}, {"policy": "on_change", "deadband": 0.5},
    {"policy": "min_interval", "min_interval_ms": 250}, {"policy": "period", "period_ms": 100},
    {"policy": "period", "period_ms": 300}, {"policy": "exclude"},
]


def _collection(db: cantools.database.Database, rng: random.Random, whole_messages: bool) -> CollectionConfig:
    """A random policy per signal (or, with `whole_messages`, one per message: the common case)."""
    rules = []
    for m in db.messages:
        policy = rng.choice(POLICIES)
        for s in m.signals:
            rules.append({"match": f"{m.name}.{s.name}", **(policy if whole_messages else rng.choice(POLICIES))})
    return CollectionConfig.model_validate({"default": {"policy": "on_change"}, "signals": rules})


def _frames(db: cantools.database.Database, rng: random.Random) -> list[tuple[float, int, bytes, bool, bool]]:
    """A simulated drive, with some payloads replaced by random bytes, padded (as CAN FD pads) or cut short."""
    out = []
    for f in VehicleSimulator(db, seed=rng.randrange(1000), start_t=1_700_000_000.0).frames_until(20.0):
        data, roll = f.data, rng.random()
        if roll < 0.2:
            data = rng.randbytes(len(data))
        elif roll < 0.23:
            data = data + bytes(rng.choice([1, 4, 8]))
        elif roll < 0.25:
            data = data[:rng.randrange(len(data))]
        out.append((f.t, f.id, data, len(data) > 8, False))
    return out


def _reference(db: cantools.database.Database, cfg: CollectionConfig, frames: list) -> dict[tuple[str, str], list]:
    filters: dict[tuple[str, str], object] = {}
    out: dict[tuple[str, str], list] = {}
    by_id = {m.frame_id: m for m in db.messages}
    for t, fid, data, _fd, _err in frames:
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
                out.setdefault(key, []).append(e)
    for key, f in filters.items():
        if f is not None and (e := f.flush()) is not None:
            out.setdefault(key, []).append(e)
    return out


def _comparable(points: list) -> list:
    """NaN (a float signal's raw bits can be one) travels as JSON null; compare it as a marker."""
    return [(t, "nan" if v is None or v != v else v, type(v).__name__ if v is not None and v == v else "nan")
            for t, v in points]


@pytest.mark.parametrize("whole_messages", [True, False], ids=["per-message", "per-signal"])
@pytest.mark.parametrize("path", DBCS, ids=lambda p: p.name)
def test_collector_keeps_what_cantools_and_the_filters_keep(path: Path, whole_messages: bool) -> None:
    db = cantools.database.load_file(str(path))
    rng = random.Random(f"{path.name}{whole_messages}")
    for _ in range(3):
        cfg = _collection(db, rng, whole_messages)
        frames = _frames(db, rng)
        scaling = {(m.name, s.name): scaling_of(s) for m in db.messages for s in m.signals}
        batches: list[Batch] = []
        codec = JsonCodec()
        batcher = Batcher(BatchingConfig(max_samples=200), codec, vehicle="v", on_batch=batches.append,
                          scaling=scaling)
        collector = Collector("bus", FrameDecoder(db), cfg, batcher, scaling=scaling)
        for i in range(0, len(frames), 97):
            collector.process(frames[i:i + 97])
        collector.flush()
        batcher.flush()
        got: dict[tuple[str, str], list] = {}
        for batch in batches:
            for s in codec.decode(batch.payload)[1]:
                got.setdefault((s.message, s.signal), []).append((s.t, s.value))
        expected = _reference(db, cfg, frames)
        assert len(batches) > 2 and sum(map(len, expected.values())) > 500, "too little traffic to compare"
        assert got.keys() == expected.keys()
        for key, points in expected.items():
            assert _comparable(got[key]) == _comparable(points), key
