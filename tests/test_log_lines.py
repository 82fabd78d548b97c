"""Hostile log lines: every reader (decode, replay, run) refuses a line that cannot be a frame with its
file, line and why, counts it, and goes on; no line makes a reader raise or print what JSON cannot hold."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.can.logformats import LogFrame, LogProblem, format_candump, parse_candump_line, read_log
from tests.conftest import DATA, run_cli

HUGE = "9" * 400 + ".5"  # overflows a double to infinity
GOOD = "(1700000000.000100) vcan0 123#DC05B4FEFF030000"  # EngineData of edge.dbc


def _strict_json(line: str) -> dict:
    """Parse as a strict JSON reader does: NaN and Infinity are not JSON."""
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")
    return json.loads(line, parse_constant=refuse)


def test_decode_refuses_a_400_digit_timestamp_with_file_line_and_why(tmp_path: Path) -> None:
    log = tmp_path / "drive.log"
    log.write_text(f"{GOOD}\n({HUGE}) vcan0 123#DC05B4FEFF030000\n{GOOD}\n")
    res = run_cli("decode", "--dbc", str(DATA / "edge.dbc"), str(log))
    assert res.returncode == 0, res.stderr
    rows = [_strict_json(line) for line in res.stdout.splitlines()]
    assert [r["t"] for r in rows] == [1700000000.0001, 1700000000.0001]
    events = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    bad = [e for e in events if e["event"] == "bad_line"]
    assert [(e["file"], e["line"]) for e in bad] == [(str(log), 2)]
    assert "400 digits" in bad[0]["reason"] and "not a time" in bad[0]["reason"]
    assert next(e for e in events if e["event"] == "decode_done")["bad_lines"] == 1


def test_run_refuses_it_as_decode_does_a_bad_line_counted_on_the_bus(tmp_path: Path) -> None:
    """The replay of `vehicle-agent run` meets the same line: a bad line with file and line number,
    counted as `bad_lines` (a loss in status), not as a frame of an impossible time."""
    log = tmp_path / "drive.log"
    log.write_text(f"{GOOD}\n({HUGE}) vcan0 123#DC05B4FEFF030000\n{GOOD.replace('000100', '000200')}\n")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({
        "vehicle_id": "car", "state_dir": str(tmp_path / "state"),
        "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")], "replay": str(log)}],
        "collection": {"default": {"policy": "all"}}}))
    res = run_cli("run", "--config", str(cfg), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    events = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    bad = [e for e in events if e["event"] == "replay_bad_line"]
    assert [(e["file"], e["line"]) for e in bad] == [(str(log), 2)] and "400 digits" in bad[0]["reason"]
    status = json.loads(run_cli("status", "--config", str(cfg), "--json").stdout)
    bus = status["buses"]["pt"]
    assert (bus["bad_lines"], bus["refused_timestamps"], status["losses"]["replay_bad_lines"]) == (1, 0, 1)
    assert bus["frames"] == 2


_TIMES = st.one_of(st.from_regex(r"\A[0-9]{1,30}(\.[0-9]{0,30})?\Z"),
                   st.builds(lambda n, frac: "9" * n + frac, st.integers(1, 500), st.sampled_from(["", ".", ".5"])),
                   st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(lambda t: f"{t:f}"))
_LINES = st.one_of(
    st.text(max_size=120),
    st.builds(lambda t, ch, ident, sep, payload: f"({t}) {ch} {ident}{sep}{payload}",
              _TIMES, st.sampled_from(["can0", "vcan0", "x"]), st.from_regex(r"\A[0-9A-Fa-f]{1,9}\Z"),
              st.sampled_from(["#", "##", "###"]), st.from_regex(r"\A[0-9A-Fa-fRr.]{0,140}\Z")),
)


def test_a_library_warning_is_a_json_event_too(tmp_path: Path) -> None:
    """cantools warns through Python's logging (two messages of one name in a file); its last-resort
    handler printed that as a plain text line among the agent's JSON lines."""
    dbc = tmp_path / "twice.dbc"
    dbc.write_text('VERSION ""\nNS_ :\nBS_:\nBU_: ECU\nBO_ 256 Twice: 8 ECU\n SG_ A : 0|8@1+ (1,0) [0|0] "" ECU\n'
                   'BO_ 257 Twice: 8 ECU\n SG_ B : 0|8@1+ (1,0) [0|0] "" ECU\n')
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({"vehicle_id": "car", "state_dir": str(tmp_path / "state"),
                                   "buses": [{"name": "pt", "databases": [str(dbc)], "replay": str(DATA / "edge.log")}]}))
    res = run_cli("run", "--config", str(cfg), "--no-progress", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    events = [_strict_json(line) for line in res.stderr.splitlines()]
    library = [e for e in events if e["event"] == "library_log"]
    assert library and library[0]["level"] == "warning" and library[0]["logger"].startswith("cantools")
    assert library[0]["message"] == "Overwriting message 'Twice' with 'Twice' in the name to message dictionary."


@settings(max_examples=400, deadline=None)
@given(_LINES)
def test_any_line_is_a_frame_a_clear_problem_or_nothing(text: str) -> None:
    """Whatever the line, the parser does not raise; a frame has a finite time, an id and a length a
    bus carries, and writes back to a line that reads as the same frame; a problem says why."""
    item = parse_candump_line(text, 7)
    if item is None:
        assert not text.strip() or text.strip().startswith("#")
        return
    if isinstance(item, LogProblem):
        assert item.line == 7 and item.reason
        return
    assert isinstance(item, LogFrame)
    assert math.isfinite(item.t) and 0 <= item.id <= 0x1FFFFFFF
    assert len(item.data) <= (64 if item.is_fd else 8)
    if not item.is_remote and not item.is_error:
        again = parse_candump_line(format_candump(item.t, item.channel, item.id, item.data, is_fd=item.is_fd,
                                                  is_extended=item.is_extended))
        assert isinstance(again, LogFrame)
        assert (again.id, again.data, again.is_fd, again.is_extended) == (item.id, item.data, item.is_fd,
                                                                          item.is_extended)


_ASC_HEADER = ("date Sun Nov 29 10:00:00.000 am 2026\nbase hex  timestamps absolute\ninternal events logged\n"
               "Begin Triggerblock Sun Nov 29 10:00:00.000 am 2026\n")


@st.composite
def _asc_line(draw: st.DrawFn) -> str:
    t = draw(st.sampled_from(["1.000000", "nan", "inf", "-5.0", "1e308", "9" * 400]))
    ident = draw(st.sampled_from(["123", "7FF", "800", "-1", "18FEF1FEx", "1FFFFFFFx", "20000000x", "FFFFFFFFx"]))
    n = draw(st.sampled_from([0, 1, 8, 9, 12, 15, 64, 65, 100]))
    data = " ".join(f"{b:02X}" for b in draw(st.binary(min_size=n, max_size=n)))
    if draw(st.booleans()):
        dlc = draw(st.integers(0, 15))
        return f"   {t} CANFD   1 Rx {ident} 0 1 {dlc:x} {n} {data} 0 0 3000 0 0 0 0 0"
    return f"   {t} 1  {ident}  Rx   d {draw(st.sampled_from([n, draw(st.integers(0, 20))]))} {data}"


@settings(max_examples=80, deadline=None)
@given(st.lists(_asc_line(), min_size=1, max_size=4))
def test_an_asc_log_gives_only_frames_a_bus_carries(lines: list[str]) -> None:
    """python-can's ASC reader hands over what the file says (negative ids, ids above 29 bits, 100-byte FD
    payloads, times of inf): every reader gets frames a CAN bus carries, each other frame a problem."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "drive.asc"
        path.write_text(_ASC_HEADER + "\n".join(lines) + "\nEnd TriggerBlock\n")
        for item in read_log(path):
            if isinstance(item, LogProblem):
                assert item.reason
                continue
            assert math.isfinite(item.t)
            assert 0 <= item.id <= (0x1FFFFFFF if item.is_extended else 0x7FF)
            assert len(item.data) in (range(65) if item.is_fd else range(9))
