"""The campaign engine on frames built with cantools from the bundled databases: trigger modes, hold
time, minimum interval, hysteresis, windows exactly [t - pre_s, t + post_s] with samples equal to
cantools' decode, overlapping events sharing samples, start/expiry, budgets, manual triggers and
config swaps."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.batcher import Batcher
from agent.campaigns.engine import CampaignEngine, CampaignError, Event
from agent.campaigns.model import Campaign
from agent.codec.columnar import ColumnarCodec
from agent.collect.collector import Collector
from agent.compiler import source_of
from agent.config import BatchingConfig, CollectionConfig
from agent.decode import load_databases
from agent.decode.decoder import FrameDecoder
from agent.model import Frame
from tests.conftest import CONFIG_DIR, ROOT

pytestmark = pytest.mark.campaigns

T0 = 1_700_000_000.0
CHASSIS = load_databases([CONFIG_DIR / "dbc" / "chassis.dbc"])
BODY = load_databases([CONFIG_DIR / "dbc" / "body.dbc"])
DECODERS = {"chassis": FrameDecoder(CHASSIS), "body": FrameDecoder(BODY)}
BRAKE = CHASSIS.get_message_by_name("BrakeStatus")
WHEELS = CHASSIS.get_message_by_name("WheelSpeeds")


def brake_frame(pressure: float, abs_active: int = 0) -> bytes:
    return bytes(BRAKE.encode({"BrakePressure": pressure, "AbsActive": abs_active, "EscActive": 0,
                               "TractionControlActive": 0, "BrakeLightOn": int(pressure > 0),
                               "BrakeStatusCounter": 0, "BrakeStatusCrc": 0}))


def wheel_frame(k: int) -> bytes:
    v = (k * 7) % 20000 / 100
    return bytes(WHEELS.encode({"WheelSpeedFL": v, "WheelSpeedFR": v + 0.5, "WheelSpeedRL": v, "WheelSpeedRR": 1.0}))


# How frames reach the engine: its own steps (`feed`), or a collector's compiled steps with the
# campaigns' work inlined (masked by on-change policies; every payload decoded with `all`, wheel
# speeds held by a period), as the agent runs them
POLICIES = {"collector": {"default": {"policy": "on_change"}},
            "collector-all": {"default": {"policy": "all"},
                              "signals": [{"match": "Wheel*", "policy": "period", "period_ms": 100}]}}
VIAS = ["engine", *POLICIES]


class Drive:
    """A chassis bus: WheelSpeeds every 10 ms, BrakeStatus every 20 ms with a pressure profile."""

    def __init__(self, campaigns: list[dict], via: str = "engine", **kw) -> None:
        self.events: list[Event] = []
        self.engine = CampaignEngine([Campaign.model_validate(c) for c in campaigns], DECODERS,
                                     self.events.append, **kw)
        self.frames: list[tuple[float, int, bytes]] = []
        self.k = 0
        self.via = via
        self.batches: list = []

    def _feeds(self):
        """(wheels, brake) step functions of the current engine."""
        if self.via == "engine":
            return self.engine.feed("chassis", 416), self.engine.feed("chassis", 432)
        collector = getattr(self, "collector", None)
        if collector is None or collector._campaigns is not self.engine:  # noqa: SLF001 - a new engine: a new collector
            batcher = Batcher(BatchingConfig(), ColumnarCodec("us"), vehicle="v", on_batch=self.batches.append)
            collector = Collector("chassis", DECODERS["chassis"], CollectionConfig.model_validate(POLICIES[self.via]),
                                  batcher, campaigns=self.engine)
            self.collector = collector

        def feed(fid: int):
            return lambda t, data: collector.process([Frame(t, fid, data)])
        return feed(416), feed(432)

    def run(self, seconds: float, pressure=lambda t: 0.0, abs_active=lambda t: 0) -> None:
        """Frames for `seconds` from where the drive is; `pressure(t)` in bar, t relative to T0."""
        end = self.k + round(seconds * 100)
        wheels, brake = self._feeds()
        while self.k < end:
            t = T0 + self.k * 0.01
            frame = (t, 416, wheel_frame(self.k))
            self.frames.append(frame)
            if wheels:
                wheels(t, frame[2])
            if self.k % 2 == 0:
                rel = self.k * 0.01
                frame = (t + 0.001, 432, brake_frame(pressure(rel), abs_active(rel)))
                self.frames.append(frame)
                if brake:
                    brake(frame[0], frame[2])
            self.k += 1

    def expected(self, lo: float, hi: float, message, signals, exclusive: bool = False) -> dict:
        """cantools' decode of the frames of `message` with lo <= t <= hi."""
        out: dict = {}
        for t, fid, data in self.frames:
            if fid == message.frame_id and (lo < t if exclusive else lo <= t) and t <= hi:
                decoded = message.decode(data, decode_choices=False)
                for s in signals:
                    ts, vs = out.setdefault(("chassis", message.name, s), ([], []))
                    ts.append(t)
                    vs.append(decoded[s])
        return out


def pulse(start: float, end: float, bar: float = 90.0):
    return lambda t: bar if start <= t < end else 0.0


@pytest.mark.parametrize("via", VIAS)
def test_rising_edge_event_covers_exactly_the_window_with_cantools_values(via: str) -> None:
    d = Drive(via=via, campaigns=[{"id": "hard-brake", "signals": [{"match": "WheelSpeedFL"}, {"match": "WheelSpeedRR"}],
                "trigger": {"expr": "BrakePressure > 60"}, "pre_s": 2, "post_s": 1}])
    d.run(12, pressure=pulse(5.0, 7.0))
    assert len(d.events) == 1
    e = d.events[0]
    t = T0 + 5.0 + 0.001  # the first BrakeStatus frame with 90 bar
    assert e.trigger_t == pytest.approx(t, abs=1e-9) and e.window == (t - 2, t + 1)
    assert e.campaign == "hard-brake" and e.expr == "BrakePressure > 60" and e.follows is None and e.complete
    want = {**d.expected(t - 2, t + 1, WHEELS, ["WheelSpeedFL", "WheelSpeedRR"]),
            **d.expected(t - 2, t + 1, BRAKE, ["BrakePressure"])}
    assert e.columns == want
    ts = e.columns[("chassis", "WheelSpeeds", "WheelSpeedFL")][0]
    assert ts[0] >= t - 2 and ts[-1] <= t + 1 and len(ts) == 300  # 10 ms frames over 3 s
    s = d.engine.status()["campaigns"]["hard-brake"]
    assert (s["triggers"], s["events"], s["samples"], s["state"]) == (1, 1, e.sample_count, "active")


@pytest.mark.parametrize("via", list(POLICIES))
def test_the_campaigns_work_is_inlined_in_the_collectors_step(via: str) -> None:
    """One function a frame: the collector's compiled step buffers the frame and evaluates the
    condition itself; conditions needing every sample behind an on-change check get a step of their own."""
    d = Drive(via=via, campaigns=[{"id": "c", "signals": [{"match": "WheelSpeedFL"}],
                                   "trigger": {"expr": "BrakePressure > 60"}}])
    d.run(0.1)
    brake, wheels = source_of(d.collector.steps[432]), source_of(d.collector.steps[416])
    assert "_ring_t(t)" in brake and "_R0.result(t, _ok)" in brake and "kept" in brake and "_step(" not in brake
    assert "_ring_t(t)" in wheels and "kept" in wheels and "_step(" not in wheels
    d = Drive(via=via, campaigns=[{"id": "d", "trigger": {"expr": "delta(BrakePressure) > 30"}}])
    d.run(0.1)
    brake = d.collector.steps[432]
    inlined = via == "collector-all"  # every payload decoded: every sample reaches the condition
    assert ("campaign step" not in brake.__code__.co_filename) is inlined
    assert ("_R0" in source_of(brake)) and (("_step(t, data)" in source_of(brake)) is not inlined)


@pytest.mark.parametrize("via", VIAS)
def test_short_and_padded_frames(via: str) -> None:
    """A frame shorter than its message is counted as a decode error once and never reaches a
    condition or an event; a padded one (CAN FD pads to its DLC) is read for its database length."""
    d = Drive(via=via, campaigns=[{"id": "c", "signals": [{"match": "BrakePressure"}],
                                   "trigger": {"expr": "BrakePressure > 60"}, "pre_s": 1, "post_s": 0.5}])
    d.run(2)
    frames = [(T0 + 2.0, b"\x01\x02"), (T0 + 2.005, brake_frame(90.0) + bytes(4))]
    if via == "engine":
        brake = d.engine.feed("chassis", 432)
        assert brake is not None
        for t, data in frames:
            brake(t, data)
    else:
        d.collector.process([Frame(t, 432, data) for t, data in frames])
    d.run(2)
    counted = d.engine.decode_errors if via == "engine" else d.collector.counters.decode_errors
    assert counted == 1
    (e,) = d.events
    assert e.trigger_t == T0 + 2.005
    ts, vs = e.columns[("chassis", "BrakeStatus", "BrakePressure")]
    at = ts.index(T0 + 2.005)
    assert T0 + 2.0 not in ts and vs[at] == 90.0 and vs[at + 1] == 0.0
    assert ts[at - 1] == max(t for t, fid, _ in d.frames if fid == 432 and t < T0 + 2.0)


@pytest.mark.parametrize("via", VIAS)
def test_falling_edge_and_condition_only(via: str) -> None:
    d = Drive(via=via, campaigns=[{"id": "release", "signals": [{"match": "WheelSpeedFL"}], "condition_only": ["BrakePressure"],
                "trigger": {"expr": "BrakePressure > 60", "mode": "falling"}, "pre_s": 0.5, "post_s": 0.5}])
    d.run(10, pressure=pulse(3.0, 4.0))
    assert [round(e.trigger_t - T0, 3) for e in d.events] == [4.001]
    assert list(d.events[0].columns) == [("chassis", "WheelSpeeds", "WheelSpeedFL")]  # no BrakePressure


@pytest.mark.parametrize("via", VIAS)
def test_hold_time_fires_when_the_hold_elapsed_and_not_for_short_pulses(via: str) -> None:
    d = Drive(via=via, campaigns=[{"id": "held", "trigger": {"expr": "BrakePressure > 60", "hold_ms": 500}, "pre_s": 1, "post_s": 1}])
    d.run(20, pressure=lambda t: 90.0 if 2 <= t < 2.3 or 10 <= t < 12 else 0.0)
    assert [round(e.trigger_t - T0, 3) for e in d.events] == [10.501]  # 10.001 + 0.5, the 0.3 s pulse never held


@pytest.mark.parametrize("via", VIAS)
def test_min_interval_suppresses_and_counts(via: str) -> None:
    d = Drive(via=via, campaigns=[{"id": "mi", "trigger": {"expr": "BrakePressure > 60", "min_interval_ms": 3000},
                "pre_s": 0, "post_s": 0.1}])
    d.run(20, pressure=lambda t: 90.0 if int(t) % 2 == 1 else 0.0)  # rising edges at 1, 3, 5, ... 19
    assert [round(e.trigger_t - T0) for e in d.events] == [1, 5, 9, 13, 17]
    assert d.engine.status()["campaigns"]["mi"]["suppressed"] == 5


@pytest.mark.parametrize("via", VIAS)
def test_while_repeats_and_always_fires_on_each_changed_evaluation(via: str) -> None:
    d = Drive(via=via, campaigns=[{"id": "w", "trigger": {"expr": "BrakePressure > 60", "mode": "while", "min_interval_ms": 1000},
                "pre_s": 0, "post_s": 0},
               {"id": "a", "trigger": {"expr": "BrakePressure > 60", "mode": "always"}, "pre_s": 0, "post_s": 0}])
    d.run(10, pressure=lambda t: 70.0 + 10 * (round(t * 50) % 2) if 2 <= t < 5.5 else 0.0)
    assert [round(e.trigger_t - T0, 3) for e in d.events if e.campaign == "w"] == [2.001, 3.001, 4.001, 5.001]
    # the pressure changes on every BrakeStatus frame while braking: one evaluation (and trigger) each
    assert sum(e.campaign == "a" for e in d.events) == 175


@pytest.mark.parametrize("via", VIAS)
def test_conditions_are_evaluated_only_when_an_input_changed(via: str) -> None:
    d = Drive(via=via, campaigns=[{"id": "a", "trigger": {"expr": "BrakePressure > 60", "mode": "always"}, "pre_s": 0, "post_s": 0}])
    d.run(10, pressure=pulse(2.0, 6.0))  # constant 90 bar for 4 s: one change, one evaluation
    assert len(d.events) == 1
    # AbsActive shares its frames with a pressure that changes on every frame: only its own change counts
    d = Drive(via=via, campaigns=[{"id": "abs", "trigger": {"expr": "AbsActive == 1", "mode": "always"}, "pre_s": 0, "post_s": 0},
               {"id": "p", "trigger": {"expr": "BrakePressure > 200"}, "pre_s": 0, "post_s": 0}])
    d.run(10, pressure=lambda t: 50.0 + 10 * (round(t * 50) % 2), abs_active=lambda t: int(3 <= t < 6))
    assert [round(e.trigger_t - T0, 3) for e in d.events] == [3.001]


@pytest.mark.parametrize("via", VIAS)
def test_hysteresis_needs_the_reset_before_it_fires_again(via: str) -> None:
    d = Drive(via=via, campaigns=[{"id": "hy", "trigger": {"set": "BrakePressure > 80", "reset": "BrakePressure < 20"},
                "pre_s": 0, "post_s": 0}])
    # 90 (set), 50 (no reset: still true), 90 (no new edge), 10 (reset), 90 (edge)
    profile = [(1, 90), (2, 50), (3, 90), (4, 10), (5, 90), (6, 0)]
    d.run(8, pressure=lambda t: next((bar for s, bar in reversed(profile) if t >= s), 0.0))
    assert [round(e.trigger_t - T0) for e in d.events] == [1, 5]
    # a plain condition fires at each crossing
    d2 = Drive(via=via, campaigns=[{"id": "plain", "trigger": {"expr": "BrakePressure > 80"}, "pre_s": 0, "post_s": 0}])
    d2.run(8, pressure=lambda t: next((bar for s, bar in reversed(profile) if t >= s), 0.0))
    assert [round(e.trigger_t - T0) for e in d2.events] == [1, 3, 5]


@pytest.mark.parametrize("via", VIAS)
def test_overlapping_events_share_samples_not_duplicate_them(via: str) -> None:
    d = Drive(via=via, campaigns=[{"id": "ov", "signals": [{"match": "WheelSpeedFL"}], "trigger": {"expr": "BrakePressure > 60"},
                "pre_s": 3, "post_s": 2}])
    d.run(20, pressure=lambda t: 90.0 if 5 <= t < 5.5 or 7 <= t < 7.5 else 0.0)
    first, second = d.events
    assert second.follows == first.event_id and second.start == first.window[1]
    key = ("chassis", "WheelSpeeds", "WheelSpeedFL")
    ts1, ts2 = first.columns[key][0], second.columns[key][0]
    assert not set(ts1) & set(ts2)
    union = d.expected(first.window[0], second.window[1], WHEELS, ["WheelSpeedFL"])[key]
    assert (ts1 + ts2, first.columns[key][1] + second.columns[key][1]) == union


@pytest.mark.parametrize("via", VIAS)
def test_start_expiry_and_states(via: str) -> None:
    d = Drive(via=via, campaigns=[{"id": "win", "start": T0 + 4, "expiry": T0 + 8, "trigger": {"expr": "BrakePressure > 60"},
                "pre_s": 0, "post_s": 0}])
    d.run(3, pressure=pulse(1, 2))
    assert d.engine.status()["campaigns"]["win"]["state"] == "waiting"
    d.run(9, pressure=lambda t: 90.0 if int(t) % 2 == 1 else 0.0)
    # true already when the campaign starts (3.99 s): a rising edge at the start; then 5, 7; 9 is expired
    assert [round(e.trigger_t - T0, 3) for e in d.events] == [4, 5.001, 7.001]
    assert d.engine.status()["campaigns"]["win"]["state"] == "expired"


@pytest.mark.parametrize("via", VIAS)
def test_period_campaign(via: str) -> None:
    d = Drive(via=via, campaigns=[{"id": "p", "signals": [{"match": "WheelSpeedRR"}], "period_ms": 2000, "pre_s": 2, "post_s": 0}])
    d.run(9)
    assert [round(e.trigger_t - T0) for e in d.events] == [2, 4, 6, 8]
    assert all(len(e.columns[("chassis", "WheelSpeeds", "WheelSpeedRR")][0]) == 200 for e in d.events[1:])


@pytest.mark.parametrize("via", VIAS)
def test_window_functions_prev_delta_and_fleetwise_syntax(via: str) -> None:
    d = Drive(via=via, campaigns=[
        {"id": "jump", "trigger": {"expr": "delta(BrakePressure) > 30 && prev(BrakePressure) < 5"}, "pre_s": 0, "post_s": 0},
        {"id": "avg", "trigger": {"expr": "last_window_avg(BrakePressure, 1000) > 40 and "
                                  "prev_last_window_avg(BrakePressure, 1000) < 40"}, "pre_s": 0, "post_s": 0},
        {"id": "fw", "trigger": {"expr": "$variable.`Vehicle.Chassis.BrakeStatus.BrakePressure` > 60 && "
                                 "!($variable.`AbsActive` == 1)"}, "pre_s": 0, "post_s": 0},
    ])
    d.run(10, pressure=pulse(3.0, 6.0), abs_active=lambda t: int(5.0 <= t))
    times = {cid: [round(e.trigger_t - T0, 3) for e in d.events if e.campaign == cid] for cid in ("jump", "avg", "fw")}
    assert times == {"jump": [3.001], "avg": [4.001], "fw": [3.001]}


@pytest.mark.parametrize("via", VIAS)
def test_window_functions_count_every_sample_not_only_changes(via: str) -> None:
    """The window [3 s, 4 s) holds 35 samples of 0 bar and 15 of 90: its average is 27, not 45."""
    d = Drive(via=via, campaigns=[{"id": "avg", "trigger": {"expr": "last_window_avg(BrakePressure, 1000) > 40"},
                                   "pre_s": 0, "post_s": 0}])
    d.run(8, pressure=pulse(3.7, 6.0))
    assert [round(e.trigger_t - T0, 3) for e in d.events] == [5.001]


def test_enum_labels_in_conditions() -> None:
    lock = BODY.get_message_by_name("DoorStatus") if any(m.name == "DoorStatus" for m in BODY.messages) else next(
        m for m in BODY.messages if any(s.name == "LockState" for s in m.signals))
    events: list[Event] = []
    eng = CampaignEngine([Campaign.model_validate({"id": "lock", "trigger": {"expr": 'LockState == "Locked"'},
                                                   "pre_s": 0, "post_s": 0})], DECODERS, events.append)
    feed = eng.feed("body", lock.frame_id)
    base = {s.name: 0 for s in lock.signals}
    for k, state in enumerate([0, 2, 2, 1, 2]):
        feed(T0 + k, bytes(lock.encode({**base, "LockState": state})))
    eng.flush()
    assert [round(e.trigger_t - T0) for e in events] == [1, 4]
    with pytest.raises(CampaignError, match=r"campaign 'bad': trigger.expr: position 14: 'Locke' is not a label"):
        CampaignEngine([Campaign.model_validate({"id": "bad", "trigger": {"expr": 'LockState == "Locke"'}})],
                       DECODERS, events.append)


@pytest.mark.parametrize("labels", [False, True], ids=["numbers", "labels"])
def test_event_samples_of_enum_signals_are_what_the_continuous_data_carries(labels: bool) -> None:
    """With `collection.labels` the collector sends labels; an event of the same frames does too
    (5 has no label: a number in both), and numbers without it."""
    lock = BODY.get_message_by_name("DoorStatus")
    events: list[Event] = []
    batches: list = []
    codec = ColumnarCodec("us")
    eng = CampaignEngine([Campaign.model_validate({"id": "lock", "trigger": {"expr": 'LockState == "Locked"'},
                                                   "pre_s": 10, "post_s": 0})], DECODERS, events.append, labels=labels)
    batcher = Batcher(BatchingConfig(), codec, vehicle="v", on_batch=batches.append)
    cfg = CollectionConfig.model_validate({"default": {"policy": "exclude"}, "labels": labels,
                                           "signals": [{"match": "LockState", "policy": "all"}]})
    collector = Collector("body", DECODERS["body"], cfg, batcher, campaigns=eng)
    base = {s.name: 0 for s in lock.signals}
    states = [0, 5, 1, 2, 3]
    collector.process([Frame(T0 + k, lock.frame_id, bytes(lock.encode({**base, "LockState": v})))
                       for k, v in enumerate(states)])
    eng.flush()
    batcher.flush()
    continuous = [(s.t, s.value) for b in batches for s in codec.decode(b.payload)[1]]
    (e,) = events
    ts, vs = e.columns[("body", "DoorStatus", "LockState")]
    assert list(zip(ts, vs, strict=True)) == [(t, v) for t, v in continuous if t <= e.trigger_t]
    assert vs == (["Unlocked", 5, "DriverUnlocked", "Locked"] if labels else [0, 5, 1, 2])


def test_unknown_and_ambiguous_signals_name_campaign_field_and_position() -> None:
    def build(expr: str, signals=()):
        CampaignEngine([Campaign.model_validate({"id": "c1", "signals": list(signals), "trigger": {"expr": expr}})],
                       DECODERS, lambda e: None)

    with pytest.raises(CampaignError, match=r"campaign 'c1': trigger.expr: position 23: unknown signal 'Nope'"):
        build("BrakePressure > 1 and Nope < 2")
    with pytest.raises(CampaignError, match=r"campaign 'c1': signals\[0\].match: no signal matches 'Zzz\*'"):
        build("BrakePressure > 1", [{"match": "Zzz*"}])
    with pytest.raises(CampaignError, match=r"unknown signal 'Brake.Pressure'"):
        build("Brake.Pressure > 1")  # a dotted name is Message.Signal, never a guess


@pytest.mark.parametrize("via", VIAS)
def test_manual_trigger_and_flush_of_an_incomplete_event(via: str) -> None:
    d = Drive(via=via, campaigns=[{"id": "m", "signals": [{"match": "WheelSpeedFL"}], "trigger": {"expr": "BrakePressure > 60"},
                "pre_s": 1, "post_s": 5}])
    d.run(3)
    event_id = d.engine.trigger("m")
    d.run(1)
    d.engine.flush()
    (e,) = d.events
    assert e.event_id == event_id and e.manual and not e.complete
    ts = e.columns[("chassis", "WheelSpeeds", "WheelSpeedFL")][0]
    assert ts[0] == pytest.approx(e.trigger_t - 1 + 0.01, abs=0.011) and ts[-1] <= T0 + 4
    with pytest.raises(KeyError):
        d.engine.trigger("nope")


@pytest.mark.parametrize("via", VIAS)
def test_global_budget_cuts_rings_and_reports_truncated_events(via: str) -> None:
    d = Drive(via=via, campaigns=[{"id": "b", "signals": [{"match": "Wheel*"}], "trigger": {"expr": "BrakePressure > 60"},
                "pre_s": 10, "post_s": 1}], budget_bytes=20_000)
    d.run(15, pressure=pulse(12, 13))
    status = d.engine.status()
    assert status["budget_limited"] and status["buffer_capacity_bytes"] <= 20_000
    assert status["buffer_bytes"] <= 20_000
    (e,) = d.events
    assert "chassis.WheelSpeeds.WheelSpeedFL" in e.truncated and status["campaigns"]["b"]["truncated_events"] == 1


@pytest.mark.parametrize("via", VIAS)
def test_a_config_swap_keeps_an_unchanged_campaign_and_its_open_event(via: str) -> None:
    campaign = {"id": "keep", "signals": [{"match": "WheelSpeedFL"}], "trigger": {"expr": "BrakePressure > 60"},
                "pre_s": 2, "post_s": 3}
    d = Drive(via=via, campaigns=[campaign])
    d.run(6, pressure=pulse(5, 5.5))
    assert not d.events and d.engine.status()["campaigns"]["keep"]["pending_events"] == 1
    d.engine = CampaignEngine([Campaign.model_validate(campaign),
                               Campaign.model_validate({"id": "new", "period_ms": 1000, "pre_s": 1, "post_s": 0})],
                              DECODERS, d.events.append, previous=d.engine)
    d.run(6)
    (e,) = [e for e in d.events if e.campaign == "keep"]
    key = ("chassis", "WheelSpeeds", "WheelSpeedFL")
    assert e.columns[key] == d.expected(e.window[0], e.window[1], WHEELS, ["WheelSpeedFL"])[key]
    assert d.engine.status()["campaigns"]["keep"]["triggers"] == 1


@settings(max_examples=30, deadline=None)
@given(pulses=st.lists(st.tuples(st.integers(1, 1900), st.integers(1, 300)), max_size=6),
       pre=st.integers(0, 300), post=st.integers(0, 300), hold=st.sampled_from([0, 60, 200]))
@pytest.mark.parametrize("via", VIAS)
def test_random_braking_events_tile_time_exactly(via, pulses, pre, post, hold) -> None:
    """Any pulse train: one event per held rising edge, each sample of WheelSpeedFL at most once,
    every event's samples exactly cantools' decode of its [start, t + post_s] span."""
    on = sorted((s / 100, (s + n) / 100) for s, n in pulses)
    d = Drive(via=via, campaigns=[{"id": "r", "signals": [{"match": "WheelSpeedFL"}], "condition_only": ["BrakePressure"],
                "trigger": {"expr": "BrakePressure > 60", "hold_ms": hold}, "pre_s": pre / 100, "post_s": post / 100}])
    d.run(25, pressure=lambda t: 90.0 if any(a <= t < b for a, b in on) else 0.0)
    key = ("chassis", "WheelSpeeds", "WheelSpeedFL")
    seen: list[float] = []
    for e in d.events:
        got = e.columns.get(key, ([], []))
        want = d.expected(e.start, e.window[1], WHEELS, ["WheelSpeedFL"], exclusive=e.follows is not None)
        assert got == want.get(key, ([], []))
        seen += got[0]
    assert len(seen) == len(set(seen))


def test_the_documented_fleetwise_port_runs_on_the_bundled_car() -> None:
    """docs/campaigns.md's ported FleetWise campaign: its expression unchanged, its signals resolved."""
    text = (ROOT / "docs" / "campaigns.md").read_text()
    doc = json.loads(text.split("The same campaign here")[1].split("```json")[1].split("```")[0])
    powertrain = load_databases([CONFIG_DIR / "dbc" / "powertrain.dbc"])
    speed = powertrain.get_message_by_name("VehicleSpeedData")
    events: list[Event] = []
    eng = CampaignEngine([Campaign.model_validate(c) for c in doc["campaigns"]],
                         {**DECODERS, "powertrain": FrameDecoder(powertrain)}, events.append)
    start = Campaign.model_validate(doc["campaigns"][0]).start_t
    feeds = eng.feed("powertrain", speed.frame_id), eng.feed("chassis", BRAKE.frame_id), eng.feed("chassis", WHEELS.frame_id)
    base = {s.name: 0 for s in speed.signals}
    for k in range(1000):
        t = start + k * 0.01
        feeds[0](t, bytes(speed.encode({**base, "VehicleSpeed": 60})))
        feeds[1](t, brake_frame(90.0 if 500 <= k < 600 else 0.0))
        feeds[2](t, wheel_frame(k))
    eng.flush()
    (e,) = events
    assert round(e.trigger_t - start, 2) == 5.0 and e.campaign == "BrakingEvent"
    assert {k[2] for k in e.columns} == {"VehicleSpeed", "WheelSpeedFL"}
