"""`vehicle-agent bench`: the command a user runs on the target prints every figure the issue names.

No timed asserts: these tests check that each figure is there and consistent, not how fast this machine is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent.bench.production import format_production

ROOT = Path(__file__).resolve().parent.parent


def test_bench_json_has_every_figure_with_plausible_values() -> None:
    res = subprocess.run([sys.executable, "-m", "agent", "bench", "--seconds", "3", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout)
    assert "bench: " in res.stderr, "progress is shown on stderr"
    # Structure and consistency only: speeds depend on the machine and its load (that is what bench is for).
    p = r["pipeline"]
    assert p["frames_per_s"] > 0 and p["us_per_frame"] > 0 and p["ratio_to_cantools"] > 0
    assert abs(p["frames_per_s"] * p["us_per_frame"] / 1e6 - 1) < 0.01, "one figure is the inverse of the other"
    assert r["with_bus_read"]["frames_per_s"] > 0
    assert r["with_bus_read"]["lost"] == 0, "the SocketCAN-path read got every frame the sender wrote"
    assert r["realtime_8000"]["cpu_percent"] > 0 and r["realtime_8000"]["frames_per_s_received"] > 0
    assert {(x["interface"], x["buses"]) for x in r["python_can_realtime"]} == {
        (i, n) for i in ("udp_multicast", "virtual") for n in (1, 3)}  # a quick run: 1 and 3 buses
    wire = r["wire"]
    assert {"columnar", "json", "named_json+zlib", "protobuf+snappy"} <= set(wire)
    assert all(w["bytes_per_sample"] > 0 for w in wire.values())
    assert wire["columnar"]["bytes_per_sample"] < wire["named_json+zlib"]["bytes_per_sample"] < wire["json"]["bytes_per_sample"]
    assert 10 < r["rss_mb"] < 500
    assert r["config_swap_ms"] > 0 and r["frames_dropped_during_swap"] == 0
    assert set(r["stages"]) >= {"cantools_decode_message", "decode", "collect", "encode", "store",
                                "bus_read_socketcan", "bus_read_python_can"}
    assert {"NORMAL/10s", "FULL/10s"} <= set(r["store"])


def test_bench_table_with_a_users_dbc(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "agent", "bench", "--seconds", "2", "--quiet",
                          "--dbc", str(ROOT / "tests" / "data" / "edge.dbc")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ratio to cantools decode_message" in res.stdout and "bus0" in res.stdout
    assert "protobuf+snappy" in res.stdout and res.stderr == ""


def test_bench_reports_a_broken_dbc(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dbc"
    bad.write_text("VERSION \"\"\nBO_ 1 Broken: 8 X\n SG_ Oops : 0|8@1+ (1,0) [0|1] \"\" X\nGARBAGE\n")
    res = subprocess.run([sys.executable, "-m", "agent", "bench", "--seconds", "2", "--dbc", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "bad.dbc" in res.stderr


def test_bench_production_profile_prints_the_production_figures() -> None:
    """`bench --profile production` (issue 19): the default figures on the production databases, plus
    start-up time of a real agent process, live swap, RSS of a replay-fed agent and an eight-bus car
    at 8,000 frames/s a bus. Structure and consistency only."""
    res = subprocess.run([sys.executable, "-m", "agent", "bench", "--profile", "production", "--seconds", "2", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout)
    assert r["profile"] == "production" and r["buses"] == ["powertrain", "chassis", "body"]
    dbs = r["databases"]
    assert sum(d["messages"] for d in dbs.values()) == 1000 and all(d["signals"] > 1500 for d in dbs.values())
    assert r["pipeline"]["frames_per_s"] > 0 and r["pipeline"]["ratio_to_cantools"] > 0
    assert r["wire"]["columnar"]["bytes_per_sample"] < r["wire"]["named_json+zlib"]["bytes_per_sample"]
    st = r["startup"]
    assert len(st["runs"]) == 2 and st["cold_s"] == st["runs"][0] and r["startup_s"] == st["runs"][1] > 0
    assert 0 < st["cpu_s"] and 0 < st["cold_cpu_s"] and st["first_drain_s"] > 0
    assert r["swap_ms"] == r["config_swap_ms"] > 0 and r["frames_dropped_during_swap"] == 0
    assert 10 < r["rss_mb"] < 1000 and r["soak"]["fed_by"].startswith("replay")
    assert 10 < r["rss_mb_simulated"] < 1000
    sat = r["saturation"]
    assert sat["buses"] == 8 and sat["rate_per_bus"] == 8000 and sat["frames"] > 0
    assert r["cpu_percent"] == sat["cpu_percent"] > 0
    text = format_production(r)  # the table of the same figures
    assert "production profile: powertrain 340 messages" in text and "pipeline (after the read)" in text
    assert f"startup_s: {r['startup_s']} s" in text and f"cpu_percent: {r['cpu_percent']} % of one core, 8 buses" in text

