"""Encodings round-trip exactly; batches respect their limits; decode-batch prints what was sent."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agent.batcher import Batcher
from agent.codec import ColumnarCodec, JsonCodec, codec_by_content
from agent.config import BatchingConfig
from agent.model import Batch, Priority
from tests.conftest import run_cli

SCALING = {("Eng", "Rpm"): (0.25, 0), ("Eng", "Temp"): (1, -40), ("Gps", "Lat"): (1, 0)}


def _columns(n: int = 500, seed: int = 1) -> dict:
    rng = random.Random(seed)
    t = 1700000000.0
    ts = [round(t + i * 0.01, 3) for i in range(n)]
    rpm = [rng.randrange(0, 4000) * 0.25 for _ in range(n)]
    temp = [rng.randrange(0, 200) - 40 for _ in range(n)]
    lat = [48.1 + rng.random() / 100 for _ in range(n)]
    return {("pt", "Eng", "Rpm"): (ts, rpm), ("pt", "Eng", "Temp"): (ts, temp),
            ("ch", "Gps", "Lat"): (ts[::2], lat[::2]), ("body", "Gear", "Label"): ([t], ["D"])}


@pytest.mark.parametrize("codec", [ColumnarCodec(), ColumnarCodec("us"), JsonCodec()], ids=["ms", "us", "json"])
def test_round_trip_is_exact(codec) -> None:
    cols = _columns()
    payload = codec.encode(cols, vehicle="car-1", scaling=SCALING)
    header, samples = codec.decode(payload)
    assert header["vehicle"] == "car-1"
    got: dict = {}
    for s in samples:
        got.setdefault((s.bus, s.message, s.signal), ([], []))
        got[(s.bus, s.message, s.signal)][0].append(s.t)
        got[(s.bus, s.message, s.signal)][1].append(s.value)
    for key, (ts, vs) in cols.items():
        gts, gvs = got[key]
        if key[2] == "Label" or codec.name == "json":
            assert gvs == vs
        else:
            assert gvs == vs, key          # values exactly equal, floats included
        assert gts == pytest.approx(ts, abs=0.0005), key


def test_columnar_is_compact() -> None:
    cols = _columns(5000)
    n = sum(len(ts) for ts, _ in cols.values())
    col = len(ColumnarCodec().encode(cols, vehicle="v", scaling=SCALING))
    js = len(JsonCodec().encode(cols, vehicle="v"))
    assert col < js / 10, (col, js)
    assert col / n < 3.0  # random rpm/temp values: noise, not a drive; still ~2 B a sample


def test_codec_by_content_type() -> None:
    assert isinstance(codec_by_content(ColumnarCodec.content_type), ColumnarCodec)
    with pytest.raises(ValueError):
        codec_by_content("text/plain")


def test_corrupt_payload_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a columnar batch"):
        ColumnarCodec().decode(b"garbage")


def _batcher(out: list, **cfg) -> tuple[Batcher, list[float]]:
    clock = [0.0]
    b = Batcher(BatchingConfig(**cfg), ColumnarCodec(), vehicle="car", on_batch=out.append, scaling=SCALING,
                clock=lambda: clock[0])
    return b, clock


def test_batches_close_on_count_age_and_priority() -> None:
    out: list[Batch] = []
    b, clock = _batcher(out, max_samples=100, max_age_s=5)
    for i in range(250):
        b.add(Priority.normal, ("pt", "Eng", "Rpm"), 1000 + i * 0.01, i * 0.25)
    assert [x.sample_count for x in out] == [100, 100]
    b.add(Priority.high, ("pt", "Airbag", "Deployed"), 1003.0, 1)
    clock[0] = 4.9
    b.tick()
    assert len(out) == 2
    clock[0] = 5.1
    b.tick()
    assert sorted((x.priority, x.sample_count) for x in out[2:]) == [(Priority.normal, 50), (Priority.high, 1)]
    ids = [x.id for x in out]
    assert len(set(ids)) == len(ids)
    assert out[0].first_t == 1000 and out[0].last_t == pytest.approx(1000.99)


def test_oversized_batches_are_split_under_max_bytes() -> None:
    out: list[Batch] = []
    b, _ = _batcher(out, max_samples=100000, max_bytes=2048)
    rng = random.Random(3)
    for i in range(5000):
        b.add(Priority.normal, ("pt", "Gps", f"S{i % 7}"), 1000 + i * 0.001, rng.random())
    b.flush()
    assert len(out) > 1
    assert all(x.size <= 2048 for x in out)
    assert sum(x.sample_count for x in out) == 5000


def test_decode_batch_command(tmp_path: Path) -> None:
    payload = ColumnarCodec().encode(_columns(10), vehicle="car-9", scaling=SCALING)
    path = tmp_path / "b.columnar"
    path.write_bytes(payload)
    res = run_cli("decode-batch", str(path))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(rows) == 10 + 10 + 5 + 1
    assert "car-9" in res.stderr
    assert rows == sorted(rows, key=lambda r: r["t"])
    path.write_bytes(b"\x00junk")
    res = run_cli("decode-batch", str(path))
    assert res.returncode == 2 and "not a columnar batch" in res.stderr


@pytest.mark.parametrize("codec", [ColumnarCodec(), ColumnarCodec("us"), JsonCodec()], ids=["columnar", "columnar_us", "json"])
def test_raw_integer_columns_decode_to_physical_values(codec) -> None:
    """Columns the collector fills with raw integers (RawValues) come out scaled, like physical ones."""
    from agent.codec import RawValues

    scaling = {("Eng", "Rpm"): (0.25, 0.0), ("Eng", "Temp"): (1, -40)}
    raws = RawValues([4000, 4001, 3999, 0, 65535])
    columns = {("pt", "Eng", "Rpm"): ([1000.0, 1000.01, 1000.02, 1000.03, 1000.04], raws),
               ("pt", "Eng", "Temp"): ([1000.0, 1000.5], RawValues([130, 131])),
               ("pt", "Eng", "Label"): ([1000.0], ["Drive"])}
    _, samples = codec.decode(codec.encode(columns, vehicle="v", scaling=scaling))
    got = {(s.signal, s.value) for s in samples}
    assert got == {("Rpm", 1000.0), ("Rpm", 1000.25), ("Rpm", 999.75), ("Rpm", 0.0), ("Rpm", 16383.75),
                   ("Temp", 90), ("Temp", 91), ("Label", "Drive")}


def test_split_batches_keep_raw_integer_columns() -> None:
    from agent.codec import RawValues

    out: list[Batch] = []
    codec = ColumnarCodec()
    b = Batcher(BatchingConfig(max_samples=100_000, max_age_s=60, max_bytes=2000), codec, vehicle="v",
                on_batch=out.append, scaling={("Gps", "Lat"): (1e-7, 0.0)})
    rng = random.Random(3)
    ts, vs = b.column(Priority.normal, ("pt", "Gps", "Lat"), raw=True)
    assert type(vs) is RawValues
    for i in range(5000):
        ts.append(1000 + i * 0.01)
        vs.append(rng.randrange(-900_000_000, 900_000_000))
    b.settle(5000)
    b.flush()
    assert len(out) > 1 and all(len(x.payload) <= 2000 for x in out)
    values = [s.value for x in out for s in codec.decode(x.payload)[1]]
    assert sorted(values) == sorted(r * 1e-7 + 0.0 for r in vs)
