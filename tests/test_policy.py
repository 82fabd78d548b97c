"""Sampling policies, resolved by exact name or glob, first match wins."""

from __future__ import annotations

from agent.collect.policy import make_filter, resolve_policy
from agent.config import CollectionConfig, SignalPolicy


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
