"""The collector's accounting: every frame it is handed is kept, counted by why it was not, or
refused, and what status and the log show says so (counts, the first ten problems then every
thousandth, the failing message). Fast, in-process: the mutation run of agent/collect/ uses them.
"""

from __future__ import annotations

import math

import cantools
from structlog.testing import capture_logs

from agent.batcher import Batcher
from agent.codec import ColumnarCodec
from agent.collect.collector import Collector
from agent.collect.policy import Filter
from agent.config import BatchingConfig, CollectionConfig
from agent.decode.decoder import FrameDecoder
from agent.model import TIME_MAX, TIME_MIN, Batch, Frame

T0 = 1_700_000_000.0
DBC = '''VERSION ""
BS_:
BU_: N
BO_ 100 Plain: 8 N
 SG_ Speed : 0|8@1+ (1,0) [0|0] "" N
 SG_ Mode : 8|8@1+ (1,0) [0|0] "" N
BO_ 101 Other: 8 N
 SG_ Junk : 0|8@1+ (1,0) [0|0] "" N
BO_ 102 Nested: 8 N
 SG_ Mux M : 0|8@1+ (1,0) [0|0] "" N
 SG_ Sub m1M : 8|8@1+ (1,0) [0|0] "" N
 SG_ X m0 : 16|8@1+ (1,0) [0|0] "" N
 SG_ Gear m2 : 24|8@1+ (1,0) [0|0] "" N
VAL_ 100 Mode 0 "Off" 1 "On" ;
VAL_ 102 Gear 0 "P" 1 "R" 2 "N" 3 "D" ;
SG_MUL_VAL_ 102 Sub Mux 1-1;
SG_MUL_VAL_ 102 X Sub 0-0;
SG_MUL_VAL_ 102 Gear Sub 2-2;
'''
DB = cantools.database.load_string(DBC, "dbc")


class Setup:
    """A collector on a real batcher and columnar codec; `samples()` decodes what it kept, as a consumer would."""

    def __init__(self, labels: bool = False, **collection: object) -> None:
        self.batches: list[Batch] = []
        self.codec = ColumnarCodec()
        self.batcher = Batcher(BatchingConfig(), self.codec, vehicle="v", on_batch=self.batches.append)
        cfg = CollectionConfig.model_validate({"default": {"policy": "all"}, "labels": labels,
                                               "signals": [{"match": "Other.*", "policy": "exclude"}], **collection})
        self.collector = Collector("can0", FrameDecoder(DB), cfg, self.batcher)

    def samples(self) -> dict[str, list]:
        self.collector.flush()
        self.batcher.flush()
        out: dict[str, list] = {}
        for batch in self.batches:
            for s in self.codec.decode(batch.payload)[1]:
                out.setdefault(f"{s.message}.{s.signal}", []).append((round(s.t - T0, 3), s.value))
        return out


def plain(t: float, speed: int, mode: int = 0, length: int = 8) -> Frame:
    return Frame(t, 100, bytes([speed, mode, 0, 0, 0, 0, 0, 0])[:length])


def test_frames_nobody_wants_are_counted_by_why() -> None:
    s = Setup()
    s.collector.process([
        plain(T0 + 0.1, 7, 1),
        Frame(T0 + 0.2, 100, bytes(8), is_error=True), Frame(T0 + 0.3, 0x700, bytes(8), is_error=True),
        *(Frame(T0 + 0.4, 101, bytes(8)) for _ in range(3)),  # known, but every signal excluded
        Frame(T0 + 0.5, 0x700, bytes(8)), Frame(T0 + 0.6, 0x700, bytes(2)), Frame(T0 + 0.7, 0x701, bytes(8)),
        Frame(T0 + 0.8, 0x1ABCDEF, bytes(8)),
    ])
    assert s.collector.counters.as_dict() == {
        "frames": 10, "error_frames": 2, "unknown_ids": 4, "unknown_distinct_ids": 3, "filtered": 3,
        "decode_errors": 0, "samples": 2, "refused_timestamps": 0, "refused_values": 0}
    assert s.samples() == {"Plain.Speed": [(0.1, 7)], "Plain.Mode": [(0.1, 1)]}


def test_distinct_unknown_ids_are_remembered_up_to_4096() -> None:
    s = Setup()
    s.collector.process([Frame(T0, 0x1000 + i, bytes(8)) for i in range(5000)])
    counts = s.collector.counters.as_dict()
    assert counts["unknown_ids"] == 5000 and counts["unknown_distinct_ids"] == 4096
    assert s.collector.counters.unknown_id_set == set(range(0x1000, 0x1000 + 4096))


def test_times_outside_1980_to_2200_are_refused_counted_and_logged_sparingly() -> None:
    s = Setup()
    bad = [0.0, TIME_MIN - 0.001, TIME_MAX + 0.001, math.nan, math.inf, -math.inf]
    with capture_logs() as logs:
        s.collector.process([plain(t, 1) for t in bad * 400])  # 2,400 refused
        s.collector.process([plain(TIME_MIN, 2), plain(TIME_MAX, 3)])  # the edges are times
    refused = [e for e in logs if e["event"] == "timestamp_refused"]
    assert [e["count"] for e in refused] == [*range(1, 11), 1000, 2000]
    assert refused[0] == {"event": "timestamp_refused", "log_level": "warning", "bus": "can0", "frame_id": 100,
                          "t": "0.0", "count": 1, "reason": "not a time between 1980 and 2200"}
    assert [e["t"] for e in refused[3:6]] == ["nan", "inf", "-inf"]
    counts = s.collector.counters.as_dict()
    assert counts["refused_timestamps"] == 2400 and counts["frames"] == 2402 and counts["samples"] == 4
    assert [v for _, v in s.samples()["Plain.Speed"]] == [2, 3]


def test_decode_errors_are_counted_and_logged_first_ten_then_every_thousandth() -> None:
    s = Setup()
    with capture_logs() as logs:
        s.collector.process([plain(T0 + i / 1000, 1, length=2) for i in range(2000)])
        s.collector.process([Frame(T0 + 3, 102, bytes([7, 0, 0, 0, 0, 0, 0, 0]))])  # no page for mux 7
    errors = [e for e in logs if e["event"] == "decode_error"]
    assert [e["count"] for e in errors] == [*range(1, 11), 1000, 2000]
    assert errors[0] == {"event": "decode_error", "log_level": "warning", "bus": "can0", "frame_id": 100,
                         "reason": "Plain needs 8 bytes, frame has 2", "count": 1}
    assert s.collector.counters.decode_errors == 2001 and s.collector.counters.samples == 0


class _ExplodesOnce(Filter):
    """A filter with a bug on its first value (a rule the compiler does not know: called through `offer`)."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls = 0

    def offer(self, t: float, v: float) -> tuple[float, float]:
        self.calls += 1
        if self.calls == 1:
            raise ZeroDivisionError("exploded")
        return (t, v)


def test_a_step_that_raises_costs_only_its_frame_and_the_id_goes_on_with_cantools() -> None:
    s = Setup()
    s.collector._slots_of(100)["Speed"].filt = _ExplodesOnce()  # the bug, in the compiled step of Plain
    with capture_logs() as logs:
        s.collector.process([plain(T0 + 1, 1, 1), Frame(T0 + 1.5, 0x700, bytes(8)), plain(T0 + 2, 2, 0),
                             plain(T0 + 3, 3, 1)])
    (failed,) = [e for e in logs if e["event"] == "step_failed"]
    assert failed["bus"] == "can0" and failed["frame_id"] == 100 and failed["message"] == "Plain"
    assert "exploded" in failed["error"] and failed["action"] == "decoding this message with cantools"
    assert s.collector.plans[100].fast is None, "decoded with cantools from then on"
    counts = s.collector.counters.as_dict()
    assert counts["decode_errors"] == 1 and counts["unknown_ids"] == 1 and counts["samples"] == 4
    assert s.samples() == {"Plain.Speed": [(2.0, 2), (3.0, 3)], "Plain.Mode": [(2.0, 0), (3.0, 1)]}


class _AlwaysExplodes(Filter):
    """A filter whose every value raises (a bug the cantools path meets too, not a decode error)."""

    __slots__ = ()

    def offer(self, t: float, v: float) -> None:
        raise RuntimeError("exploded")


def test_a_step_that_keeps_raising_on_cantools_too_is_a_counted_decode_error_logged_sparingly() -> None:
    s = Setup()
    s.collector._slots_of(100)["Speed"].filt = _AlwaysExplodes()
    with capture_logs() as logs:
        s.collector.process([plain(T0 + i / 1000, i % 256) for i in range(1001)] + [Frame(T0 + 2, 0x700, bytes(8))])
    (failed,) = [e for e in logs if e["event"] == "step_failed"]  # the compiled step, once
    assert isinstance(failed["exc_info"], RuntimeError) and failed["log_level"] == "error"
    errors = [e for e in logs if e["event"] == "decode_error"]  # then the cantools step, every frame
    assert [e["count"] for e in errors] == [*range(2, 11), 1000]
    assert errors[0] == {"event": "decode_error", "log_level": "warning", "bus": "can0", "frame_id": 100,
                         "reason": "RuntimeError('exploded')", "count": 2}
    counts = s.collector.counters.as_dict()
    assert counts["decode_errors"] == 1001 and counts["unknown_ids"] == 1 and counts["samples"] == 0


def test_debug_codegen_of_a_message_cantools_decodes_says_so() -> None:
    s = Setup()
    assert s.collector.generated("Nested") == [
        ("can0:Nested", "# decoded with cantools (nested multiplexing, or a layout cantools cannot unpack): "
                        "nothing generated\n")]
    assert s.collector.generated("Other") == [], "no signal of it is wanted"
    generated = s.collector.generated("Plain")
    assert [name for name, _source in generated] == ["<vehicle-agent step can0:Plain>", "<vehicle-agent values Plain>"]
    assert all(source.startswith("def ") for _name, source in generated)


def test_the_cantools_path_keeps_every_page_with_labels() -> None:
    """Nested multiplexing is decoded with cantools: each frame's active page is kept, as labels when asked."""
    s = Setup(labels=True)
    frames = [Frame(T0 + 1, 102, bytes([1, 2, 0, 3, 0, 0, 0, 0])), Frame(T0 + 2, 102, bytes([1, 0, 9, 0, 0, 0, 0, 0])),
              Frame(T0 + 3, 102, bytes([1, 2, 0, 7, 0, 0, 0, 0])), plain(T0 + 4, 5, 1), plain(T0 + 5, 6, 9)]
    s.collector.process(frames)
    assert s.collector.counters.samples == 13
    assert s.samples() == {
        "Nested.Mux": [(1.0, 1), (2.0, 1), (3.0, 1)], "Nested.Sub": [(1.0, 2), (2.0, 0), (3.0, 2)],
        "Nested.Gear": [(1.0, "D"), (3.0, 7)], "Nested.X": [(2.0, 9)],  # 7: no label, the number
        "Plain.Speed": [(4.0, 5), (5.0, 6)], "Plain.Mode": [(4.0, "On"), (5.0, 9)]}


def test_flush_emits_what_periods_hold_and_counts_it() -> None:
    s = Setup(labels=True, default={"policy": "period", "period_ms": 1000},
              signals=[{"match": "Other.*", "policy": "exclude"}, {"match": "Mux", "policy": "all"}])
    s.collector.process([plain(T0 + 0.1, 1, 0), plain(T0 + 0.2, 2, 1),
                         Frame(T0 + 0.3, 102, bytes([1, 2, 0, 1, 0, 0, 0, 0]))])
    assert s.collector.counters.samples == 1, "Mux kept; each period still open"
    s.collector.flush()
    assert s.collector.counters.samples == 5
    assert s.samples() == {"Plain.Speed": [(0.2, 2)], "Plain.Mode": [(0.2, "On")], "Nested.Mux": [(0.3, 1)],
                           "Nested.Sub": [(0.3, 2)], "Nested.Gear": [(0.3, "R")]}
