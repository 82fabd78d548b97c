"""While the uplink cannot deliver, the running agent keeps, expires and retries as promised.

The real agent process on a simulated bus, its file sink failing every send (sink.fault): stored
batches older than the default TTLs (low 1 day, normal 7 days, high 30 days) are expired, a
`store.ttl_s` changed by SIGHUP applies without a restart, retries back off exponentially with
jitter up to the cap, and `vehicle-agent status --check` answers as a health check would.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.can.rawcan import RawCanSource
from agent.can.source import REOPEN_INITIAL_S, BusSource
from agent.health import read_status
from agent.model import Priority
from agent.store import Store
from agent.uplink.forwarder import backoff_delay
from tests.conftest import ROOT, run_cli, start_logged_agent, wait_for
from tests.test_store import make_batch

DAY = 86400.0
INITIAL, CAP = 0.05, 0.4


def _counters(state: Path) -> dict:
    try:
        return read_status(state)["store"]["counters"]
    except (OSError, ValueError, KeyError):
        return {}


def _stored(state: Path, ids: set[str]) -> set[str]:
    with Store(state / "store.db", max_bytes=10**9) as s:
        return {b.id for b in s.next_batches(10_000)} & ids


def test_expiry_with_default_ttls_a_live_ttl_change_and_backoff(tmp_path: Path) -> None:
    state = tmp_path / "state"
    now = time.time()
    aged = {"b0000": (Priority.low, 1.1 * DAY), "b0001": (Priority.low, 0.5 * DAY),
            "b0002": (Priority.normal, 7.1 * DAY), "b0003": (Priority.normal, 2 * DAY),
            "b0004": (Priority.high, 31 * DAY), "b0005": (Priority.high, 29 * DAY)}
    with Store(state / "store.db", max_bytes=10**8) as s:
        for i, (prio, age) in enumerate(aged.values()):
            s.put(make_batch(i, prio, created=now - age))
    cfg = {"vehicle_id": "ttl", "state_dir": str(state),
           "buses": [{"name": "pt", "interface": "virtual", "channel": "retention-test", "simulate": True,
                      "databases": [str(ROOT / "config" / "dbc" / "powertrain.dbc")]}],
           "sink": {"type": "file", "path": "outbox", "retry_initial_s": INITIAL, "retry_max_s": CAP,
                    "fault": {"fail_rate": 1.0}}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli("status", "--state-dir", str(state), "--check").returncode == 1, "never ran here: unhealthy"
    proc, lines, reader = start_logged_agent(path)

    def failures() -> list[dict]:
        return [e for e in (json.loads(x) for x in list(lines) if x.startswith("{")) if e.get("event") == "sink_failed"]

    try:
        wait_for(lambda: sum(_counters(state).get(f"expired_{p}_batches", 0) for p in ("low", "normal", "high")) >= 3,
                 timeout=60, what="the batches past the default TTLs expired")
        counters = _counters(state)
        assert [counters.get(f"expired_{p}_batches") for p in ("low", "normal", "high")] == [1, 1, 1]
        assert _stored(state, set(aged)) == {"b0001", "b0003", "b0005"}, "younger than their TTL: kept"
        assert run_cli("status", "--state-dir", str(state), "--check").returncode == 0, "running: healthy"
        assert run_cli("status", "--state-dir", str(state), "--check", "--max-age", "0").returncode == 1

        path.write_text(yaml.safe_dump({**cfg, "store": {"ttl_s": {"normal": DAY}}}))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _counters(state).get("expired_normal_batches") == 2, timeout=60,
                 what="the 2-day normal batch expired under the new 1-day TTL")
        assert _stored(state, set(aged)) == {"b0001", "b0005"}
        wait_for(lambda: len(failures()) >= 10, timeout=60, what="ten failed sends")
    finally:
        proc.terminate()
        proc.wait(60)
        reader.join(10)
    assert proc.returncode == 0, "".join(lines)[-2000:]
    assert run_cli("status", "--state-dir", str(state), "--check").returncode == 1, "stopped: unhealthy"
    assert run_cli("status", "--config", str(tmp_path / "missing.yaml"), "--check").returncode == 2

    # Backoff: between half and all of min(cap, initial * 2^(n-1)) after the n-th consecutive failure.
    events = failures()
    for e in events:
        ceiling = min(CAP, INITIAL * 2 ** (e["failures"] - 1))
        assert ceiling / 2 - 0.006 <= e["retry_in_s"] <= ceiling + 0.006, e
    at_cap = [e["retry_in_s"] for e in events if e["failures"] >= 5]
    assert at_cap and max(at_cap) <= CAP and len(set(at_cap)) > 1, f"capped and jittered: {at_cap}"


def test_backoff_is_exponential_jittered_and_capped() -> None:
    rng = random.Random(7)
    for n in range(1, 12):
        draws = [backoff_delay(n, 0.5, 20.0, rng) for _ in range(400)]
        ceiling = min(20.0, 0.5 * 2 ** (n - 1))
        assert all(ceiling / 2 <= d <= ceiling for d in draws), n
        assert min(draws) < ceiling * 0.55 and max(draws) > ceiling * 0.95, f"spread over [c/2, c] at {n}"
    assert backoff_delay(0, 0.5, 20.0, rng) <= 0.5, "no failure yet: at most the initial delay"


def test_a_bus_reopens_after_1_2_4_s_up_to_its_cap_without_jitter() -> None:
    """The sources' reopen backoff is the one backoff_delay (issue 18), with their timing kept: 1, 2, 4, ...
    s up to reopen_max_s (30 s), the same every time (a local interface, nobody else retries it)."""
    cap = RawCanSource("pt", "vcan-none").reopen_max_s
    assert cap == BusSource("pt", "virtual", "x").reopen_max_s == 30.0 and REOPEN_INITIAL_S == 1.0
    delays = [backoff_delay(n, REOPEN_INITIAL_S, cap, random.Random(n), jitter=False) for n in range(1, 10)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


@given(failures=st.integers(min_value=0, max_value=10**6), jitter=st.booleans())
@settings(max_examples=200, deadline=None)
def test_any_number_of_failures_backs_off_at_most_the_cap(failures: int, jitter: bool) -> None:
    """A bus that cannot open is retried every 30 s: 1,025 failures in 8.5 hours (a sink offline for days
    fails its sends as often). The delay stays the cap; 2 ** 1024 as an int raised OverflowError out of
    the source (and of the supervisor, the forwarder), where the old reopen delay had capped its exponent."""
    for initial, cap in ((REOPEN_INITIAL_S, 30.0), (0.5, 300.0)):
        delay = backoff_delay(failures, initial, cap, random.Random(failures), jitter=jitter)
        ceiling = cap if failures > 40 else min(cap, initial * 2 ** max(0, failures - 1))
        assert (ceiling / 2 <= delay <= ceiling) if jitter else delay == ceiling


async def test_both_bus_readers_wait_1_then_2_s_before_reopening() -> None:
    """The raw SocketCAN reader and a python-can bus that cannot open (a CAN socket on `lo`: no CAN there,
    or no CAN in this kernel) say, and wait, 1 s and then 2 s before they try again."""
    stop = asyncio.Event()

    async def read(source: RawCanSource | BusSource) -> None:
        async for _ in source.frames(stop):
            pass

    with capture_logs() as logs:
        readers = [asyncio.create_task(read(s)) for s in (RawCanSource("raw", "lo"), BusSource("pycan", "socketcan", "lo"))]

        def delays(bus: str) -> list[float]:
            return [e["retry_in_s"] for e in logs if e["event"] == "bus_open_failed" and e["bus"] == bus]
        deadline = time.monotonic() + 30
        while not (len(delays("raw")) >= 2 and len(delays("pycan")) >= 2) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*readers)
    assert delays("raw")[:2] == delays("pycan")[:2] == [1.0, 2.0], logs
