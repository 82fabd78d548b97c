"""Sampling policies, resolved by exact name or glob, first match wins."""

from __future__ import annotations

from agent.collect.policy import make_filter, resolve_policy
from agent.config import CollectionConfig, SignalPolicy

T0 = 1_700_000_000.0  # frames need a time between 1980 and 2200


def _run(policy: SignalPolicy, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    f = make_filter(policy)()
    out = [e for t, v in points if (e := f.offer(t, v)) is not None]
    if (e := f.flush()) is not None:
        out.append(e)
    return out


def test_on_change_with_deadband() -> None:
    pts = [(0, 10.0), (1, 10.0), (2, 10.4), (3, 10.6), (4, 10.6), (5, 9.0)]
    assert _run(SignalPolicy(policy="on_change"), pts) == [(0, 10.0), (2, 10.4), (3, 10.6), (5, 9.0)]
    assert _run(SignalPolicy(policy="on_change", deadband=0.5), pts) == [(0, 10.0), (3, 10.6), (5, 9.0)]


def test_min_interval() -> None:
    pts = [(t / 10, t) for t in range(25)]
    got = _run(SignalPolicy(policy="min_interval", min_interval_ms=1000), pts)
    assert [t for t, _ in got] == [0.0, 1.0, 2.0]


def test_period_keeps_latest_of_each_period() -> None:
    pts = [(0.05, 1), (0.09, 2), (0.12, 3), (0.18, 4), (0.31, 5)]
    got = _run(SignalPolicy(policy="period", period_ms=100), pts)
    assert got == [(0.09, 2), (0.18, 4), (0.31, 5)]


def test_resolution_first_match_glob_and_qualified() -> None:
    cfg = CollectionConfig(default=SignalPolicy(policy="on_change"), signals=[
        SignalPolicy(match="Wheel*", policy="period", period_ms=100),
        SignalPolicy(match="Brakes.WheelSpeedFL", policy="exclude"),
        SignalPolicy(match="Airbag.*", policy="all", priority="high"),
    ])
    assert resolve_policy(cfg, "Brakes", "WheelSpeedFL").policy == "period"
    assert resolve_policy(cfg, "Airbag", "Deployed").priority == "high"
    assert resolve_policy(cfg, "Engine", "Rpm").policy == "on_change"
    assert make_filter(SignalPolicy(policy="exclude")) is None


def test_generated_sampler_decides_exactly_like_the_filters() -> None:
    """The collector's generated per-message code keeps the same samples as each filter's `offer`."""
    import random

    from agent.collect.codegen import Slot
    from agent.collect.policy import KeepAll, MinInterval, OnChange, Period
    from agent.compiler import compile_sampler

    def filters() -> list:
        return [OnChange(0), OnChange(0.5), MinInterval(0.05), KeepAll(), Period(0.1), OnChange(0)]

    rng = random.Random(5)
    generated = [Slot(f, 1, ("b", "m", f"s{i}"), f"s{i}") for i, f in enumerate(filters())]
    columns: dict = {}

    def bind(slot: Slot) -> list:
        slot.ts, slot.vs = columns.setdefault(slot.key, ([], []))
        return slot.ts

    sample = compile_sampler(generated, bind, None, "test")
    reference = filters()
    expected: dict = {}
    t = 1000.0
    values = [0.0] * len(reference)
    for _ in range(5000):
        t += rng.choice([0.001, 0.01, 0.02, 0.1])
        values = [v if rng.random() < 0.6 else round(v + rng.uniform(-1, 1), 1) for v in values]
        values[-1] = float("nan") if rng.random() < 0.1 else values[-1]
        values[1] = float("nan") if rng.random() < 0.05 else values[1]  # deadband filter meets NaN too
        kept = sample(t, tuple(values))
        emits = [(i, f.offer(t, v)) for i, (f, v) in enumerate(zip(reference, values, strict=True))]
        for i, e in emits:
            if e is not None:
                expected.setdefault(("b", "m", f"s{i}"), ([], []))
                expected[("b", "m", f"s{i}")][0].append(e[0])
                expected[("b", "m", f"s{i}")][1].append(e[1])
        assert kept == sum(e is not None for _, e in emits)
    assert {k: (ts, [repr(v) for v in vs]) for k, (ts, vs) in columns.items()} == \
        {k: (ts, [repr(v) for v in vs]) for k, (ts, vs) in expected.items()}


def test_collector_survives_bad_frames_and_padded_payloads() -> None:
    """Undefined multiplexer values on the cantools path are decode errors, not a crashed bus; a
    payload longer than the DBC's (CAN FD padding) decodes like the exact one and loses no change."""
    import cantools

    from agent.batcher import Batcher
    from agent.codec import ColumnarCodec
    from agent.collect.collector import Collector
    from agent.config import BatchingConfig, CollectionConfig
    from agent.decode.decoder import FrameDecoder
    from agent.model import Frame, Priority

    dbc = '''VERSION ""
BS_:
BU_: N
BO_ 100 Nested: 8 N
 SG_ Mux M : 0|8@1+ (1,0) [0|0] "" N
 SG_ Sub m1M : 8|8@1+ (1,0) [0|0] "" N
 SG_ X m0 : 16|8@1+ (1,0) [0|0] "" N
 SG_ Y m2 : 16|8@1+ (1,0) [0|0] "" N
SG_MUL_VAL_ 100 Sub Mux 1-1;
SG_MUL_VAL_ 100 X Sub 0-0;
SG_MUL_VAL_ 100 Y Sub 2-2;
BO_ 200 Plain: 8 N
 SG_ Speed : 0|8@1+ (1,0) [0|0] "" N
'''
    db = cantools.database.load_string(dbc, "dbc")
    batcher = Batcher(BatchingConfig(), ColumnarCodec(), vehicle="v", on_batch=lambda b: None)
    collector = Collector("can0", FrameDecoder(db), CollectionConfig.model_validate({"default": {"policy": "on_change"}}),
                          batcher)
    collector.process([Frame(T0 + 1.0, 100, bytes([7] + [0] * 7)), Frame(T0 + 1.1, 100, bytes([1, 2, 9, 0, 0, 0, 0, 0]))])
    assert collector.counters.decode_errors == 1
    speeds = [b"\x01" + bytes(7), b"\x02" + bytes(11), b"\x01" + bytes(7), b"\x01" + bytes(3)]
    collector.process([Frame(T0 + 2.0 + i, 200, data, len(data) > 8) for i, data in enumerate(speeds)])
    assert batcher.open[Priority.normal].columns[("can0", "Plain", "Speed")][1] == [1, 2, 1]
    assert collector.counters.decode_errors == 2, "the 4-byte frame is too short"


def test_one_message_name_at_two_ids_keeps_one_kind_of_column(tmp_path) -> None:
    """Two frame ids named alike on one bus share a column: it must not mix raw and physical values."""
    from agent.batcher import Batcher
    from agent.codec import ColumnarCodec
    from agent.collect.collector import Collector
    from agent.config import BatchingConfig, CollectionConfig
    from agent.decode import FrameDecoder
    from agent.decode.database import load_databases

    head = 'VERSION ""\nNS_ :\nBS_:\nBU_: ECU\n'
    (tmp_path / "a.dbc").write_text(head + 'BO_ 256 Status: 8 ECU\n SG_ Temp : 0|8@1+ (0.5,-40) [0|0] "" ECU\n')
    (tmp_path / "b.dbc").write_text(head + 'BO_ 512 Status: 8 ECU\n SG_ Mode M : 8|8@1+ (1,0) [0|0] "" ECU\n'
                                    ' SG_ Temp m1 : 0|8@1+ (0.5,-40) [0|0] "" ECU\n')
    decoder = FrameDecoder(load_databases([tmp_path / "a.dbc", tmp_path / "b.dbc"]))
    scaling = {("Status", "Temp"): (0.5, -40), ("Status", "Mode"): (1, 0)}
    for order in ((512, 256), (256, 512)):
        out: list = []
        codec = ColumnarCodec()
        batcher = Batcher(BatchingConfig(), codec, vehicle="v", on_batch=out.append, scaling=scaling)
        collector = Collector("pt", decoder, CollectionConfig.model_validate({"default": {"policy": "all"}}), batcher,
                              scaling=scaling)
        collector.process([(T0 + 1.0 + i, fid, bytes([100, 1, 0, 0, 0, 0, 0, 0]), False, False)
                           for i, fid in enumerate(order)])
        batcher.flush()
        temps = [s.value for s in codec.decode(out[0].payload)[1] if s.signal == "Temp"]
        assert temps == [10.0, 10.0], order


def test_a_change_of_exactly_the_deadband_is_not_kept() -> None:
    """Kept: changes larger than the deadband (the values are exact in binary: no rounding decides)."""
    pts = [(0, 10.0), (1, 10.5), (2, 9.5), (3, 10.75), (4, 10.25), (5, 11.5)]
    assert _run(SignalPolicy(policy="on_change", deadband=0.5), pts) == [(0, 10.0), (3, 10.75), (5, 11.5)]
