"""The bench's python-can real-time stage (agent/bench/pycan.py): its figures are there and add up.

Structure only: how many frames a loaded machine loses or how much CPU it takes is what the bench
measures, not what a test may assert.
"""

from __future__ import annotations

import pytest

from agent.bench.pycan import INTERFACES, format_rows, python_can_realtime
from agent.bench.trace import build_trace
from agent.config import load_config
from tests.conftest import CONFIG_DIR


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    trace = build_trace(load_config(CONFIG_DIR / "agent.yaml"), 2.0)
    return python_can_realtime(trace, tmp_path_factory.mktemp("pycan"), rate=2000, seconds=0.5, bus_counts=(1, 2))


def test_every_interface_and_bus_count_has_a_row(rows: list[dict]) -> None:
    assert [(r["interface"], r["buses"]) for r in rows] == [(i, n) for i in INTERFACES for n in (1, 2)]
    for r in rows:
        assert r["sent"] == 1000 * r["buses"], r  # 2,000 frames/s for 0.5 s a bus
        assert r["lost"] == r["sent"] - r["received"] and r["lost_counted"] >= 0
        assert r["cpu_percent"] > 0 and r["tick_ms"] > 0


def test_udp_multicast_loses_nothing_it_does_not_count(rows: list[dict]) -> None:
    """The sources' own counter agrees with sent - received (a loss the kernel counted and the agent read)."""
    for r in rows:
        if r["interface"] == "udp_multicast":
            assert r["rcvbuf_bytes"] > 0 and r["lost"] == r["lost_counted"], r


def test_the_report_has_a_line_per_run(rows: list[dict]) -> None:
    lines = format_rows(rows)
    assert len(lines) == 1 + len(rows)
    assert "udp_multicast x2" in lines[2] and "sent" in lines[2] and "% of one core" in lines[2]
