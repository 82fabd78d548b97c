"""The built-in vehicle simulator: plausible drive traffic for every message of a database.

Demos, the quick start and the tests need traffic that behaves like a car, not random bytes: a
change-only policy keeps almost nothing of a constant signal and almost everything of noise, so
only a drive (standstill, accelerate, cruise, brake) shows what the agent really costs and keeps.
Each message is sent at its cycle time (GenMsgCycleTime, else 100 ms) with a random phase; signal
values come from one physical drive model where the name says what the signal is (speeds, rpm,
pedals, temperatures, odometer), counters count, checksums are computed, enums and booleans change
rarely, and anything else drifts smoothly inside its DBC range.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import can
import structlog
from can.interfaces.virtual import VirtualBus
from cantools.database import Database, Message, Signal

from agent.can.logformats import format_candump
from agent.decode import cycle_time_ms

log = structlog.get_logger()

DEFAULT_CYCLE_S = 0.1
# Backpressure (python-can's virtual bus queues every frame for its readers without bound): the simulation
# holds while a reader has this many frames waiting, and makes at most MAX_STEP_S of real time's frames at
# once, so what waits stays below SIM_BACKLOG_MAX plus one step (a 700-message database: ~2,700 frames).
SIM_BACKLOG_MAX = 5000
MAX_STEP_S = 0.1


def cycle_s(msg: Message) -> float:
    """How often the simulator sends a message: its `GenMsgCycleTime` (at least every millisecond), else
    every 100 ms (a negative or unbounded one too: it looped forever or raised)."""
    ms = cycle_time_ms(msg)
    return ms / 1000.0 if ms else DEFAULT_CYCLE_S


def frames_per_second(db: Database) -> float:
    """The simulated traffic of a database: every message at its cycle time."""
    return sum(1.0 / cycle_s(m) for m in db.messages)
_GEAR_RATIOS = (3.5, 2.1, 1.4, 1.0, 0.8, 0.65)
_GEAR_UP_KMH = (0.0, 18.0, 35.0, 55.0, 75.0, 95.0)
_FINAL_DRIVE = 3.5
_WHEEL_CIRCUMFERENCE_M = 2.0
_TEMP_TARGETS = {  # degC a warm car settles at, by a word in the signal name
    "coolant": 90.0, "oil": 100.0, "trans": 80.0, "exhaust": 450.0, "tire": 35.0, "cabin": 21.5,
    "ambient": 15.0, "battery": 30.0, "intake": 25.0, "fuel": 30.0,
}


class SimFrame(NamedTuple):
    """One simulated frame, ready to send or log."""

    t: float
    id: int
    data: bytes
    is_extended: bool
    is_fd: bool


class DriveModel:
    """The car's physical state, stepped in simulated time: speed follows a drive cycle, the rest follows speed."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.t = 0.0
        self.speed_kmh = 0.0
        self.accel = 0.0
        self.throttle = 0.0
        self.brake = 0.0
        self.steering_deg = 0.0
        self.steering_rate = 0.0
        self.odometer_km = 48_211.3
        self.trip_km = 0.0
        self.fuel_pct = 72.0
        self.warmth = 0.0  # 0 cold start .. 1 warm
        self._phase = "stand"
        self._phase_end = rng.uniform(2.0, 6.0)
        self._target_kmh = 0.0
        self.hard = False          # this stop is an emergency stop (-8.5 m/s^2, ABS)
        self.abs_active = False
        self._drives = 0           # the first drive is short and ends hard: the quick start shows an event

    @property
    def gear(self) -> int:
        return max(i + 1 for i, v in enumerate(_GEAR_UP_KMH) if self.speed_kmh >= v)

    @property
    def rpm(self) -> float:
        wheel_rpm = self.speed_kmh / 3.6 / _WHEEL_CIRCUMFERENCE_M * 60.0
        return max(780.0 + 40.0 * self.throttle, wheel_rpm * _GEAR_RATIOS[self.gear - 1] * _FINAL_DRIVE)

    @property
    def torque_nm(self) -> float:
        return 320.0 * self.throttle - 60.0 * self.brake - 15.0

    def step(self, dt: float) -> None:
        """Advance by `dt` seconds, in sub-steps of at most 50 ms so long gaps stay physical."""
        while dt > 1e-9:
            h = min(dt, 0.05)
            self._step(h)
            dt -= h

    def _step(self, dt: float) -> None:
        self.t += dt
        if self.t >= self._phase_end:
            self._next_phase()
        want = {"stand": 0.0, "accel": 2.2, "cruise": 0.0, "brake": -8.5 if self.hard else -3.0}[self._phase]
        if self._phase == "accel" and self.speed_kmh >= self._target_kmh:
            cruise_s = self.rng.uniform(3.0, 6.0) if self._drives == 0 else self.rng.uniform(8.0, 40.0)
            self._phase, self._phase_end = "cruise", self.t + cruise_s
        if self._phase == "brake" and self.speed_kmh <= self._target_kmh + 0.5:
            self._phase = "stand" if self._target_kmh == 0 else "cruise"
            self._phase_end = self.t + self.rng.uniform(3.0, 12.0 if self._target_kmh == 0 else 25.0)
        if self._phase == "cruise":
            want = 0.15 * (self._target_kmh - self.speed_kmh) + self.rng.gauss(0.0, 0.25)
        self.accel += (want - self.accel) * min(1.0, dt * 3.0)
        self.speed_kmh = max(0.0, self.speed_kmh + self.accel * dt * 3.6)
        if self.speed_kmh == 0.0 and self.accel < 0:
            self.accel = 0.0
        self.throttle = min(1.0, max(0.0, self.accel / 3.0 + (0.12 + self.speed_kmh / 600 if self.speed_kmh > 0 else 0)))
        self.brake = min(1.0, max(0.0, -self.accel / 4.0)) if self.accel < -0.3 else 0.0
        self.abs_active = self.hard and self._phase == "brake" and self.accel < -6.0 and self.speed_kmh > 5.0
        steering = 25.0 * math.sin(self.t / 7.0) * math.exp(-self.speed_kmh / 60.0) + self.rng.gauss(0, 0.4)
        self.steering_rate = (steering - self.steering_deg) / dt
        self.steering_deg = steering
        km = self.speed_kmh * dt / 3600.0
        self.odometer_km += km
        self.trip_km += km
        self.fuel_pct = max(5.0, self.fuel_pct - km * 0.09 - dt * 0.00002)
        self.warmth = min(1.0, self.warmth + dt / 600.0)

    def _next_phase(self) -> None:
        rng = self.rng
        if self._phase == "stand":
            self._phase, self._target_kmh = "accel", rng.choice((30.0, 50.0, 50.0, 80.0, 100.0, 120.0))
            self._phase_end = self.t + 60.0
        elif self._phase == "cruise":
            self._phase, self._target_kmh = "brake", rng.choice((0.0, 0.0, 30.0))
            self._phase_end = self.t + 60.0
            self.hard = self._drives == 0 or rng.random() < 0.25  # about one stop in four is an emergency stop
            self._drives += 1
        else:
            self._phase_end = self.t + 5.0

    def temperature(self, name: str) -> float:
        lower = name.lower()
        target = next((v for k, v in _TEMP_TARGETS.items() if k in lower), 40.0)
        base = min(target, 15.0)
        return base + (target - base) * self.warmth


ValueFn = Callable[[DriveModel, float], float]
_QUIET_WORDS = ("airbag", "crash", "deploy", "open")  # resting: no simulated crashes, doors shut
_EVENT_WORDS = ("warning", "fault", "low", "error", "abs", "esc", "traction", "kickdown", "mil", "dtc")
_BAD_LABELS = ("fault", "error", "invalid", "notavailable", "unknown", "reserved")


class _SignalSim:
    """How one signal moves: a drive-model function, a counter, a rare switch or a bounded drift."""

    def __init__(self, sig: Signal, rng: random.Random) -> None:
        self.sig = sig
        self.rng = rng
        self.lo, self.hi = _range(sig)
        self.kind, self.fn = _classify(sig)
        choices: Mapping[int, Any] = sig.choices or {}
        self.discrete = sorted(int(k) for k, label in choices.items()
                               if not str(label).lower().startswith(_BAD_LABELS)) or None
        span = self.hi - self.lo
        self.center = (span * rng.uniform(-0.05, 0.05) if self.lo < 0 < self.hi
                       else self.lo + span * rng.uniform(0.2, 0.5))
        resting = max(self.lo, 0.0) if self.lo <= 0 <= self.hi else self.lo
        self.value = self.center if self.kind == "drift" else (self.discrete[0] if self.discrete else resting)
        self.resting = self.value
        self.event_end = 0.0
        self.counter = 0

    def next(self, car: DriveModel, dt: float) -> float:
        if self.kind == "counter":
            self.counter = (self.counter + 1) % (int(self.hi) + 1)
            return self.counter
        if self.kind == "model":
            v = self.fn(car, dt)  # type: ignore[misc]
        elif self.kind == "quiet":
            v = self.resting
        elif self.kind == "event":  # resting, with a few seconds of "on" about every five minutes
            if self.value != self.resting and car.t >= self.event_end:
                self.value = self.resting
            elif self.value == self.resting and self.rng.random() < dt / 300.0:
                self.value, self.event_end = min(self.hi, self.resting + 1), car.t + self.rng.uniform(1.0, 5.0)
            v = self.value
        elif self.kind == "rare":
            if self.rng.random() < dt / 30.0:  # about one change every 30 s
                options = self.discrete or list(range(int(self.lo), int(self.hi) + 1))
                self.value = self.rng.choice(options)
            v = self.value
        else:  # drift: mean-reverting random walk, about 1 % of the range a second
            span = self.hi - self.lo
            self.value += (self.center - self.value) * min(1.0, dt * 0.2) + self.rng.gauss(0, span * 0.01 * math.sqrt(dt))
            v = self.value
        return min(self.hi, max(self.lo, v))


def _range(sig: Signal) -> tuple[float, float]:
    if sig.minimum is not None and sig.maximum is not None and sig.maximum > sig.minimum:
        return float(sig.minimum), float(sig.maximum)
    if sig.is_float:
        return 0.0, 100.0
    raw_lo = -(1 << (sig.length - 1)) if sig.is_signed else 0
    raw_hi = (1 << (sig.length - 1)) - 1 if sig.is_signed else (1 << sig.length) - 1
    a, b = raw_lo * sig.scale + sig.offset, raw_hi * sig.scale + sig.offset
    return (min(a, b), max(a, b))


def _classify(sig: Signal) -> tuple[str, ValueFn | None]:
    """Which behaviour a signal gets, from its name and shape."""
    name = sig.name
    lower = name.lower()
    if "counter" in lower:
        return "counter", None
    if "checksum" in lower or "crc" in lower:
        return "checksum", None
    fn = _model_fn(name, lower)
    if fn is not None:
        return "model", fn
    if any(w in lower for w in _QUIET_WORDS):
        return "quiet", None
    if any(w in lower for w in _EVENT_WORDS):
        return "event", None
    if sig.choices or sig.length <= 3:
        return "rare", None
    return "drift", None


def _noise(car: DriveModel, sd: float) -> float:
    return car.rng.gauss(0.0, sd)


def _model_fn(name: str, lower: str) -> ValueFn | None:  # noqa: C901 - a lookup table with conditions
    if name in ("VehicleSpeed", "WheelBasedVehicleSpeed"):
        return lambda c, dt: c.speed_kmh
    if lower.startswith("wheelspeed"):
        factor = {"fl": 1.002, "fr": 0.998, "rl": 1.001, "rr": 0.999}.get(lower[-2:], 1.0)
        return lambda c, dt: c.speed_kmh * factor + (abs(_noise(c, 0.05)) if c.speed_kmh > 0 else 0.0)
    if name == "EngineSpeed":
        return lambda c, dt: c.rpm + _noise(c, 6.0)
    if name == "OutputShaftSpeed":
        return lambda c, dt: c.rpm / _GEAR_RATIOS[c.gear - 1]
    if name in ("VehicleAccel", "LongitudinalAccel"):
        return lambda c, dt: c.accel + _noise(c, 0.02)
    if name == "LateralAccel":
        return lambda c, dt: c.speed_kmh / 3.6 * c.steering_deg * 0.004 + _noise(c, 0.02)
    if name == "YawRate":
        return lambda c, dt: c.speed_kmh * c.steering_deg * 0.012 + _noise(c, 0.05)
    if name == "VerticalAccel":
        return lambda c, dt: 9.81 + _noise(c, 0.05 + c.speed_kmh / 1000)
    if name in ("ThrottlePosition", "AcceleratorPedalPos"):
        return lambda c, dt: 100.0 * c.throttle
    if name == "EngineLoad":
        return lambda c, dt: 15.0 + 80.0 * c.throttle
    if name.startswith("EngineTorque"):
        return lambda c, dt: c.torque_nm if name != "EngineTorqueLimit" else 400.0
    if name == "AbsActive":
        return lambda c, dt: 1.0 if c.abs_active else 0.0
    if name == "BrakePressure":
        return lambda c, dt: 120.0 * c.brake
    if name in ("BrakePedalPressed", "BrakeLightOn", "BrakeSwitch"):
        return lambda c, dt: 1.0 if c.brake > 0 else 0.0
    if name == "SteeringWheelAngle":
        return lambda c, dt: c.steering_deg
    if name == "SteeringWheelRate":
        return lambda c, dt: c.steering_rate
    if name == "CurrentGear":
        return lambda c, dt: c.gear
    if name == "GearSelected":
        return lambda c, dt: 3.0 if c.speed_kmh > 0 or c.t > 3 else 0.0
    if name == "EngineRunning" or name == "VehicleSpeedValid":
        return lambda c, dt: 1.0
    if name == "IgnitionState":
        return lambda c, dt: 2.0
    if name in ("Odometer", "OdometerTotal"):
        return lambda c, dt: c.odometer_km
    if name == "EngineHours":
        return lambda c, dt: 2143.6 + c.t / 3600.0
    if name == "TripDistance":
        return lambda c, dt: c.trip_km
    if name == "FuelLevel":
        return lambda c, dt: c.fuel_pct
    if name == "FuelConsumptionRate":
        return lambda c, dt: 0.8 + 14.0 * c.throttle
    if name == "BatteryVoltage":
        return lambda c, dt: 14.1 + _noise(c, 0.03)
    if name.startswith("RideHeight"):
        return lambda c, dt: _noise(c, 0.5 + c.speed_kmh / 50)
    if "temp" in lower and "target" not in lower:
        return lambda c, dt: c.temperature(name) + _noise(c, 0.2)
    if lower.startswith("obj") and lower.endswith("distance"):
        return lambda c, dt: 20.0 + 15.0 * math.sin(c.t / 9.0 + len(name)) + (c.speed_kmh / 3)
    return None


class _MessageSim:
    """One message's schedule and its signals (per multiplexer page)."""

    def __init__(self, msg: Message, rng: random.Random) -> None:
        self.msg = msg
        self.cycle = cycle_s(msg)
        self.due = rng.uniform(0.0, self.cycle)
        self.signals = [_SignalSim(s, rng) for s in msg.signals if not s.is_multiplexer]
        self.mux = next((s for s in msg.signals if s.is_multiplexer), None)
        self.pages = sorted({i for s in msg.signals for i in (s.multiplexer_ids or ())}) if self.mux else []
        self.page = 0

    def encode(self, car: DriveModel, dt: float) -> bytes:
        values: dict[str, float] = {}
        page = None
        if self.mux is not None and self.pages:
            page = self.pages[self.page % len(self.pages)]
            self.page += 1
            values[self.mux.name] = page
        for s in self.signals:
            if page is not None and s.sig.multiplexer_ids is not None and page not in s.sig.multiplexer_ids:
                continue
            values[s.sig.name] = 0 if s.kind == "checksum" else s.next(car, dt)
        try:
            data = self.msg.encode(values, scaling=True, strict=False)
        except (ValueError, OverflowError):  # a factor or offset no value survives (inf, nan): raw zeros
            return bytes(self.msg.length)
        checksums = [s for s in self.signals if s.kind == "checksum" and s.sig.name in values]
        if checksums:
            x = 0
            for b in data:
                x ^= b
            for s in checksums:
                values[s.sig.name] = x & int(s.hi)
            data = self.msg.encode(values, scaling=True, strict=False)
        return bytes(data)


class VehicleSimulator:
    """Every message of a database at its cycle time, on a simulated clock starting at `start_t` (epoch s)."""

    def __init__(self, db: Database, *, seed: int = 0, start_t: float | None = None) -> None:
        self.rng = random.Random(seed)
        self.start_t = time.time() if start_t is None else start_t
        self.car = DriveModel(self.rng)
        self.messages = [_MessageSim(m, self.rng) for m in db.messages]
        self.sim_t = 0.0

    def frames_until(self, sim_t: float) -> list[SimFrame]:
        """All frames due up to `sim_t` seconds of simulated time, in time order."""
        self.car.step(sim_t - self.sim_t)
        self.sim_t = max(self.sim_t, sim_t)
        out: list[SimFrame] = []
        for m in self.messages:
            while m.due <= sim_t:
                data = m.encode(self.car, m.cycle)
                out.append(SimFrame(self.start_t + m.due, m.msg.frame_id, data, m.msg.is_extended_frame,
                                    m.msg.is_fd or len(data) > 8))  # a DBC without VFrameFormat: its length says FD
                m.due += m.cycle
        out.sort(key=lambda f: f.t)
        return out


@dataclass(slots=True)
class SimulatorStats:
    """What the simulator did, for the bus's status: simulated frames it could not send are not bus loss."""

    sent: int = 0
    dropped: int = 0          # frames the bus refused (a full transmit or receive queue): simulated-frame drops
    behind_s: float = 0.0     # real seconds the simulation held back (readers behind, or the loop busy)
    backlog: int = 0          # frames waiting for the slowest reader at the last tick (virtual bus only)
    backlog_peak: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "dropped": self.dropped, "behind_s": round(self.behind_s, 3),
                "backlog": self.backlog, "backlog_peak": self.backlog_peak}


def receiver_backlog(bus: can.BusABC) -> int:
    """Frames waiting in the fullest receive queue of the bus's other ends: python-can's virtual bus
    only. A real bus's kernel queue cannot be seen; a full one refuses the send (ENOBUFS), counted."""
    if not isinstance(bus, VirtualBus):
        return 0
    return max((q.qsize() for q in list(bus.channel) if q is not bus.queue), default=0)


async def run_simulator(bus: can.BusABC, db: Database, *, rate: float = 1.0, duration: float | None = None,
                        stop: asyncio.Event | None = None, tick: float = 0.01, seed: int = 0,
                        stats: SimulatorStats | None = None) -> int:
    """Send simulated traffic on `bus` in (scaled) real time until `stop` or `duration`; returns frames sent.

    Frames due within a tick go out together, so the simulator itself costs one wake-up per tick. It
    is paced by its readers: while one has SIM_BACKLOG_MAX frames waiting, or when the loop was busy
    for more than MAX_STEP_S, simulated time does not catch up (counted as `behind_s`): a large
    database must not fill memory with frames nobody can take. A send the bus refuses (ENOBUFS on
    SocketCAN, a full reader queue) drops that frame, counted as a simulated-frame drop.
    """
    sim = VehicleSimulator(db, seed=seed)
    stop = stop or asyncio.Event()
    stats = stats if stats is not None else SimulatorStats()
    last = time.monotonic()
    sim_t = 0.0
    while not stop.is_set():
        now = time.monotonic()
        due, last = (now - last) * rate, now
        stats.backlog = receiver_backlog(bus)
        stats.backlog_peak = max(stats.backlog_peak, stats.backlog)
        step = 0.0 if stats.backlog >= SIM_BACKLOG_MAX else min(due, MAX_STEP_S * rate)
        stats.behind_s += (due - step) / rate
        sim_t += step
        end = duration is not None and sim_t >= duration
        if end:
            sim_t = duration  # type: ignore[assignment]
        for n, f in enumerate(sim.frames_until(sim_t), 1):
            msg = can.Message(timestamp=f.t, arbitration_id=f.id, is_extended_id=f.is_extended, is_fd=f.is_fd,
                              bitrate_switch=f.is_fd, data=f.data)
            try:
                bus.send(msg)
                stats.sent += 1
            except can.CanError as exc:
                stats.dropped += 1
                if stats.dropped in (1, 10, 100) or stats.dropped % 1000 == 0:
                    log.warning("simulator_send_failed", error=str(exc), dropped=stats.dropped)
            if n % 500 == 0:  # a long step yields, so a stop (SIGTERM) is seen at once
                await asyncio.sleep(0)
                if stop.is_set():
                    return stats.sent
        if end:
            break
        try:
            await asyncio.wait_for(stop.wait(), tick)
        except TimeoutError:
            pass
    return stats.sent


def record_candump_log(db: Database, path: str | Path, *, seconds: float = 10.0, channel: str = "vcan0",
                       seed: int = 0, start_t: float | None = None) -> int:
    """Write `seconds` of simulated traffic as a `candump -L` log; returns the number of frames."""
    sim = VehicleSimulator(db, seed=seed, start_t=1_700_000_000.0 if start_t is None else start_t)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        t = 0.0
        while t < seconds:
            t = min(seconds, t + 0.05)
            for f in sim.frames_until(t):
                fh.write(format_candump(f.t, channel, f.id, f.data, is_fd=f.is_fd, is_extended=f.is_extended) + "\n")
                n += 1
    return n
