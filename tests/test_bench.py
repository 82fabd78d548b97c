"""`vehicle-agent bench`: the command a user runs on the target prints every figure the issue names.

No timed asserts: these tests check that each figure is there and consistent, not how fast this machine is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
