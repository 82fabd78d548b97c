"""Encodings round-trip exactly; batches respect their limits; decode-batch prints what was sent."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize("resolution", ["ms", "us"])
def test_timestamps_round_to_the_nearest_tick(resolution: str) -> None:
    tick = 1e-3 if resolution == "ms" else 1e-6
    base = 1_700_000_000.0 if resolution == "ms" else 1_700_000.0  # exact to well below a tenth of a tick
    ts = [base + 0.4 * tick, base + 0.6 * tick, base + 1.45 * tick, base + 2.7 * tick]
    codec = ColumnarCodec(resolution)
    _, samples = codec.decode(codec.encode({("pt", "Eng", "Rpm"): (ts, [1.0, 2.0, 3.0, 4.0])}, vehicle="v"))
    ticks = [round((s.t - base) / tick) for s in samples]
    assert ticks == [0, 1, 1, 3], "to the nearest tick, not truncated"


def test_scaled_signals_with_an_offset_decode_exactly() -> None:
    """physical = raw * scale + offset, in that order (a factor and an offset that do not commute)."""
    scaling = {("Eng", "Oil"): (0.5, -40.0)}
    physical = [r * 0.5 - 40.0 for r in (0, 1, 80, 255)]
    columns = {("pt", "Eng", "Oil"): ([1000.0, 1000.1, 1000.2, 1000.3], physical)}
    for codec in (ColumnarCodec(), ColumnarCodec("us"), JsonCodec()):
        _, samples = codec.decode(codec.encode(columns, vehicle="v", scaling=scaling))
        assert [s.value for s in samples] == [-40.0, -39.5, 0.0, 87.5], codec.name


def _wire(payload: bytes) -> dict:
    """The columnar document as docs/wire-format.md describes it (zstd, then msgpack)."""
    import msgpack
    import zstandard

    return msgpack.unpackb(zstandard.ZstdDecompressor().decompressobj().decompress(payload), raw=False)


def test_columnar_wire_layout_is_the_documented_one() -> None:
    """docs/wire-format.md: t0 the earliest tick (rounded), shared timestamp columns, raw integer deltas
    where a scaling reproduces the values exactly, floats and labels as they are with scale 1, offset 0."""
    t = [1000.0006, 1000.0106, 1000.0206]  # 0.6 ms: rounds up, truncation would not
    columns = {("pt", "Eng", "Oil"): (t, [-40.0, -39.5, 87.5]),        # 0.5 * raw - 40: raws 0, 1, 255
               ("pt", "Eng", "Rpm"): (list(t), [800.0, 800.25, 799.75]),  # the same instants: one times column
               ("pt", "Eng", "Lambda"): ([1000.0008, 1000.0208], [0.97, 1.01]),  # no scaling reproduces these
               ("pt", "Eng", "Mode"): ([1000.0008, 1000.0208], ["eco", "sport"]),
               ("pt", "Eng", "Gear"): ([1000.00081, 1000.02081], [3, 4]),  # other floats, the same ms ticks
               ("pt", "Eng", "Count"): ([1000.0206], [7])}               # no scaling given: scale 1, offset 0
    scaling = {("Eng", "Oil"): (0.5, -40.0), ("Eng", "Rpm"): (0.25, 0.0), ("Eng", "Lambda"): (0.5, 0.0)}
    doc = _wire(ColumnarCodec().encode(columns, vehicle="car", scaling=scaling))
    assert (doc["v"], doc["vehicle"], doc["res"], doc["t0"]) == (2, "car", 1000, 1000001)
    assert doc["times"] == [[0, 10, 10], [0, 20], [20]], "rounded to the nearest ms; equal columns shared"
    assert doc["series"] == [
        ["pt", "Eng", "Oil", 0, 0, 0.5, -40.0, [0, 1, 254]],
        ["pt", "Eng", "Rpm", 0, 0, 0.25, 0.0, [3200, 1, -2]],
        ["pt", "Eng", "Lambda", 1, 1, 1, 0, [0.97, 1.01]],
        ["pt", "Eng", "Mode", 1, 2, 1, 0, ["eco", "sport"]],
        ["pt", "Eng", "Gear", 1, 0, 1, 0, [3, 1]],
        ["pt", "Eng", "Count", 2, 0, 1, 0, [7]],
    ]
    assert "sim" not in doc, "only a simulator's batch says so"
    assert _wire(ColumnarCodec().encode(columns, vehicle="car", scaling=scaling, simulated=True))["sim"] is True
    assert _wire(ColumnarCodec().encode({}, vehicle="car"))["t0"] == 0


def test_codecs_by_name_and_their_errors() -> None:
    from agent.codec import codec_for

    us = codec_for("columnar", timestamp_resolution="us", level=19)
    assert us.ticks == 1_000_000 and _wire(us.encode({("b", "m", "s"): ([1.0], [1.0])}, vehicle="v"))["res"] == 10**6
    assert isinstance(codec_for("json"), JsonCodec)
    with pytest.raises(ValueError, match="unknown encoding 'xml' \\(columnar, json\\)"):
        codec_for("xml")
    with pytest.raises(ValueError, match="unknown batch content type 'text/plain'"):
        codec_by_content("text/plain")


@pytest.mark.parametrize("doc", [b"[1, 2]", b'{"v": 2, "samples": []}', b'{"v": 1, "samples": {}}', b'{"samples": []}'])
def test_a_json_batch_that_is_not_one_is_refused(doc: bytes) -> None:
    with pytest.raises(ValueError, match=r"not a vehicle-agent json batch \(expected \{'v': 1, 'samples'"):
        JsonCodec().decode(doc)


def test_a_column_with_more_timestamps_than_values_is_refused() -> None:
    with pytest.raises(ValueError):
        JsonCodec().encode({("pt", "Eng", "Rpm"): ([1.0, 2.0], [5])}, vehicle="v")


def test_json_batch_header_and_samples() -> None:
    header, samples = JsonCodec().decode(JsonCodec().encode({("pt", "Eng", "Rpm"): ([2.0, 1.0], [5, 6])}, vehicle="v"))
    assert header == {"v": 1, "vehicle": "v"}
    assert [(s.t, s.value) for s in samples] == [(1.0, 6), (2.0, 5)]


def test_a_columnar_batch_that_is_not_one_is_refused() -> None:
    import msgpack
    import zstandard

    def pack(doc: object) -> bytes:
        return zstandard.ZstdCompressor().compress(msgpack.packb(doc))

    with pytest.raises(ValueError, match="unsupported columnar batch version 3"):
        ColumnarCodec().decode(pack({"v": 3}))
    with pytest.raises(ValueError, match=r"unsupported columnar batch version \?"):
        ColumnarCodec().decode(pack([1]))
    short = {"v": 1, "vehicle": "v", "res": 1000, "t0": 0, "times": [[0, 1]], "series": [["b", "m", "s", 0, 1, 1, 0, [1.5]]]}
    with pytest.raises(ValueError):  # a series with fewer values than its timestamps: corrupt, not truncated
        ColumnarCodec().decode(pack(short))
    streamed = zstandard.ZstdCompressor().compressobj()  # a zstd frame without its content size
    payload = streamed.compress(msgpack.packb({**short, "series": [["b", "m", "s", 0, 1, 1, 0, [1.5, 2.5]]]}))
    assert [s.value for s in ColumnarCodec().decode(payload + streamed.flush())[1]] == [1.5, 2.5]


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


@pytest.mark.parametrize("codec", [ColumnarCodec(), JsonCodec()], ids=["columnar", "json"])
def test_decode_batch_command_prints_every_sample_with_its_value(tmp_path: Path, codec) -> None:
    cols = _columns(10)
    path = tmp_path / f"b.{codec.name}"
    path.write_bytes(codec.encode(cols, vehicle="car-9", scaling=SCALING))
    res = run_cli("decode-batch", str(path))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert f"{codec.name} batch, vehicle 'car-9', 26 samples" in res.stderr
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows), "in time order"
    expected = sorted((round(t, 3), bus, message, signal, v) for (bus, message, signal), (ts, vs) in cols.items()
                      for t, v in zip(ts, vs, strict=True))
    got = sorted((round(r["t"], 3), r["bus"], r["message"], r["signal"], r["value"]) for r in rows)
    assert got == expected
    path.write_bytes(b"\x00junk")
    res = run_cli("decode-batch", str(path))
    assert res.returncode == 2 and "not a columnar batch" in res.stderr


@pytest.mark.parametrize("codec", [ColumnarCodec(), ColumnarCodec("us"), JsonCodec()], ids=["columnar", "columnar_us", "json"])
def test_raw_integer_columns_decode_to_physical_values(codec) -> None:
    """Columns the collector fills with raw integers (RawValues) come out scaled, like physical ones."""
    from agent.codec import RawValues

    scaling = {("Eng", "Rpm"): (0.25, 0.0), ("Eng", "Temp"): (1, -40), ("Eng", "Oil"): (0.5, -40)}
    raws = RawValues([4000, 4001, 3999, 0, 65535])
    columns = {("pt", "Eng", "Rpm"): ([1000.0, 1000.01, 1000.02, 1000.03, 1000.04], raws),
               ("pt", "Eng", "Temp"): ([1000.0, 1000.5], RawValues([130, 131])),
               ("pt", "Eng", "Oil"): ([1000.0, 1000.5], RawValues([100, 0])),
               ("pt", "Eng", "Label"): ([1000.0], ["Drive"])}
    _, samples = codec.decode(codec.encode(columns, vehicle="v", scaling=scaling))
    got = {(s.signal, s.value) for s in samples}
    assert got == {("Rpm", 1000.0), ("Rpm", 1000.25), ("Rpm", 999.75), ("Rpm", 0.0), ("Rpm", 16383.75),
                   ("Temp", 90), ("Temp", 91), ("Oil", 10.0), ("Oil", -40.0), ("Label", "Drive")}


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


def test_batches_fill_through_columns_and_carry_their_metadata() -> None:
    """The collector's path (column + settle): a batch closes at exactly max_samples and says what it holds."""
    out: list[Batch] = []
    clock = [0.0]
    b = Batcher(BatchingConfig(max_samples=10, max_age_s=5), ColumnarCodec(), vehicle="car-3", on_batch=out.append,
                scaling=SCALING, clock=lambda: clock[0], wallclock=lambda: 1_750_000_000.5)
    b.simulated_buses = frozenset({"sim"})
    ts, vs = b.column(Priority.normal, ("pt", "Eng", "Rpm"))
    for i in range(9):
        ts.append(1000 + i * 0.01)
        vs.append(i * 0.25)
    b.settle(9)
    assert out == [] and b.pending_samples == 9
    ts.append(1000.09)
    vs.append(2.25)
    b.settle(1)
    assert [x.sample_count for x in out] == [10], "exactly max_samples closes the batch"
    x = out[0]
    assert (x.vehicle, x.buses, x.encoding, x.content_type, x.content_encoding, x.created, x.simulated) == \
        ("car-3", ("pt",), "columnar", ColumnarCodec.content_type, "zstd", 1_750_000_000.5, False)
    assert x.id.startswith(f"{1_750_000_000_500:012x}") and len(x.id) == 32
    assert (x.first_t, x.last_t) == (1000, 1000.09) and b.batches_closed == 1 and b.generation == 1
    header, samples = ColumnarCodec().decode(x.payload)
    assert header["vehicle"] == "car-3" and [s.value for s in samples] == [i * 0.25 for i in range(10)]

    b.add(Priority.normal, ("sim", "Eng", "Rpm"), 1001.0, 1.0)
    b.add(Priority.normal, ("ch", "Gps", "Lat"), 1001.0, 48.1)
    clock[0] = 5.0
    b.tick()
    assert len(out) == 2, "exactly max_age_s old closes the batch"
    assert out[1].buses == ("ch", "sim") and out[1].simulated and b.batches_closed == 2


def test_splitting_stops_at_single_samples_and_refuses_one_too_large() -> None:
    rng = random.Random(2)
    big = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(900)) for _ in range(3)]
    huge = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(2000))
    key = ("pt", "Diag", "Dump")
    one = max(len(ColumnarCodec().encode({key: ([1000.0], [s])}, vehicle="v")) for s in big)
    out: list[Batch] = []
    refused: list[tuple[str, int]] = []
    b = Batcher(BatchingConfig(max_samples=100, max_bytes=max(one, 1025)), ColumnarCodec(), vehicle="v",
                on_batch=out.append, on_refused=lambda bus, n: refused.append((bus, n)))
    for i, s in enumerate(big[:2]):
        b.add(Priority.normal, key, 1000.0 + i, s)
    b.flush()
    assert [x.sample_count for x in out] == [1, 1] and not refused, "two samples split into two batches"
    b.add(Priority.normal, key, 1002.0, huge)
    b.add(Priority.normal, ("pt", "Eng", "Rpm"), 1002.0, 1.0)
    b.flush()
    assert refused == [("pt", 1)] and [x.sample_count for x in out[2:]] == [1], "the lone oversized sample is refused"


def test_a_payload_of_exactly_max_bytes_is_not_split() -> None:
    cols = {("pt", "Eng", "Rpm"): ([1000.0 + i * 0.01 for i in range(400)], [random.Random(i).random() for i in range(400)])}
    size = len(ColumnarCodec().encode(cols, vehicle="v", scaling=SCALING))
    out: list[Batch] = []
    b = Batcher(BatchingConfig(max_samples=100_000, max_bytes=size), ColumnarCodec(), vehicle="v",
                on_batch=out.append, scaling=SCALING)
    ts, vs = cols[("pt", "Eng", "Rpm")]
    for t, v in zip(ts, vs, strict=True):
        b.add(Priority.normal, ("pt", "Eng", "Rpm"), t, v)
    b.flush()
    assert [x.size for x in out] == [size]


@settings(max_examples=150, deadline=None)
@given(cap=st.integers(1, 60), drains=st.lists(st.lists(st.integers(0, 90), min_size=1, max_size=6), min_size=1,
                                               max_size=5), disorder=st.randoms(use_true_random=False),
       ordered=st.booleans())
def test_max_samples_is_hard_through_column_and_settle(cap: int, drains: list[list[int]], disorder,
                                                       ordered: bool) -> None:
    """Drains of any size between two counts (a fast replay appends thousands of samples at once): no
    batch holds more than max_samples, a batch closed by count holds exactly that, each signal's
    samples come out once and in order, what does not fill a batch stays open and keeps its age; also
    when a column's times are not in order (a damaged log), and with many samples of one time."""
    from agent.codec import RawValues

    out: list[Batch] = []
    clock = [0.0]
    b = Batcher(BatchingConfig(max_samples=cap, max_age_s=5), ColumnarCodec(), vehicle="v", on_batch=out.append,
                scaling={("Eng", "S0"): (1, 0)}, clock=lambda: clock[0])
    sent: dict[str, list[float]] = {}
    t = 1000.0
    for drain in drains:
        for n, count in enumerate(drain):
            ts, vs = b.column(Priority.normal, ("pt", "Eng", f"S{n}"), raw=n == 0)
            assert type(vs) is (RawValues if n == 0 else list)
            for _ in range(count):
                t += 0.001
                ts.append(round(t, 2) if ordered else 1000 + disorder.randrange(50) / 10)
                vs.append(len(sent.setdefault(f"S{n}", [])))
                sent[f"S{n}"].append(ts[-1])
        b.settle(sum(drain))
        assert all(x.sample_count == cap for x in out), "closed by count: exactly max_samples"
        assert b.pending_samples < cap
    clock[0] = 5.0
    b.tick()  # what stayed open closes at the age of its first sample's batch
    assert b.pending_samples == 0 and all(x.sample_count <= cap for x in out)
    if ordered:  # cut at a time: the batches follow each other
        assert all(a.last_t <= z.first_t for a, z in zip(out, out[1:], strict=False))
    got: dict[str, list[tuple[float, float]]] = {}
    for x in out:
        for s in ColumnarCodec().decode(x.payload)[1]:
            got.setdefault(s.signal, []).append((s.t, s.value))
    assert {k: [v for _, v in pts] for k, pts in got.items()} == {k: list(range(len(v))) for k, v in sent.items() if v}
    assert {k: [round(t, 3) for t, _ in pts] for k, pts in got.items()} == \
        {k: [round(t, 3) for t in v] for k, v in sent.items() if v}
    assert len({x.id for x in out}) == len(out)


def test_what_a_cut_leaves_open_keeps_the_age_of_its_batch() -> None:
    """max_age_s bounds the in-memory window: the samples left open after a cut at max_samples close
    when the batch they arrived in is max_age_s old, not max_age_s after the cut."""
    out: list[Batch] = []
    clock = [0.0]
    b = Batcher(BatchingConfig(max_samples=10, max_age_s=5), ColumnarCodec(), vehicle="v", on_batch=out.append,
                clock=lambda: clock[0])
    ts, vs = b.column(Priority.normal, ("pt", "Eng", "Rpm"))
    ts += [1000 + i * 0.01 for i in range(25)]
    vs += list(range(25))
    clock[0] = 3.0
    b.settle(25)
    assert [x.sample_count for x in out] == [10, 10] and b.pending_samples == 5
    clock[0] = 5.0
    b.tick()
    assert [x.sample_count for x in out] == [10, 10, 5]
    assert [s.value for x in out for s in ColumnarCodec().decode(x.payload)[1]] == list(range(25))
