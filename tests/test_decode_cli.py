"""`vehicle-agent decode`: candump/ASC/BLF logs to JSON lines, values checked against the DBC's scaling."""

from __future__ import annotations

import json
from pathlib import Path

import can
import cantools

from tests.conftest import run_cli


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_decodes_every_kind_of_signal(edge_dbc: Path, edge_log: Path) -> None:
    res = run_cli("decode", "--dbc", str(edge_dbc), str(edge_log))
    assert res.returncode == 0, res.stderr
    out = {o["message"]: o for o in _lines(res.stdout)}
    eng = out["EngineData"]
    assert eng == {"t": 1700000000.0001, "bus": "vcan0", "id": 0x123, "message": "EngineData",
                   "signals": {"EngineSpeed": 1520.5, "CoolantTemp": 90, "Torque": -120.5, "Gear": 3}}
    assert out["J1939Speed"]["id"] == 0x18FEF1FE and out["J1939Speed"]["signals"] == {"WheelSpeed": 88.5}
    assert out["BigEndianMsg"]["signals"] == {"Pressure": 12.3, "Angle": -45.6}
    assert out["FloatMsg"]["signals"] == {"Latitude": 48.5, "Longitude": -11.25}
    assert out["MuxMsg"]["signals"] == {"Page": 1, "TirePressureFR": 32.5}
    assert out["FdMsg"]["signals"] == {"Cell0": 3.912, "Cell31": 4.1}


def test_labels_and_problems_reported_with_line_numbers(edge_dbc: Path, edge_log: Path) -> None:
    res = run_cli("decode", "--labels", "--dbc", str(edge_dbc), str(edge_log))
    assert res.returncode == 0
    out = _lines(res.stdout)
    assert out[0]["signals"]["Gear"] == "D"
    assert len(out) == 6
    events = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    short = [e for e in events if e["event"] == "short_frame"]
    assert short and short[0]["line"] == 8
    bad = sorted(e["line"] for e in events if e["event"] == "bad_line")
    assert bad == [9, 10]
    done = next(e for e in events if e["event"] == "decode_done")
    assert done["unknown_frames"] == 2 and done["unknown_id_list"] == ["0x7FF"]


def test_reads_stdin(edge_dbc: Path, edge_log: Path) -> None:
    res = run_cli("decode", "--dbc", str(edge_dbc), input=edge_log.read_text())
    assert res.returncode == 0
    assert len(_lines(res.stdout)) == 6


def test_asc_and_blf_by_extension(tmp_path: Path, edge_dbc: Path) -> None:
    db = cantools.database.load_file(edge_dbc)
    msg = db.get_message_by_name("EngineData")
    frames = [can.Message(timestamp=1700000000 + i * 0.01, arbitration_id=msg.frame_id, is_extended_id=False,
                          data=msg.encode({"EngineSpeed": 800 + i * 10, "CoolantTemp": 80, "Torque": 5, "Gear": 1}))
              for i in range(20)]
    for ext in ("asc", "blf"):
        path = tmp_path / f"drive.{ext}"
        with can.Logger(str(path)) as writer:
            for f in frames:
                writer(f)
        res = run_cli("decode", "--dbc", str(edge_dbc), str(path))
        assert res.returncode == 0, res.stderr
        speeds = [o["signals"]["EngineSpeed"] for o in _lines(res.stdout)]
        assert speeds == [800 + i * 10 for i in range(20)], ext


def test_broken_dbc_names_file_and_line(tmp_path: Path, edge_log: Path) -> None:
    bad = tmp_path / "broken.dbc"
    bad.write_text('VERSION ""\n\nBU_: A\nBO_ 100 Msg: 8 A\n SG_ Sig : 0|8@1+ (1,0) [0|255] "" A\n'
                   ' SG_ Bad : 8|8@1+ (1,0 [0|255] "" A\n')
    res = run_cli("decode", "--dbc", str(bad), str(edge_log))
    assert res.returncode == 2
    assert f"{bad}:6:" in res.stderr
    assert res.stdout == ""


def test_diagnostics_database_is_refused_by_name(tmp_path: Path, edge_log: Path) -> None:
    """cantools reads a CDD file as a diagnostics database (no messages): a clear refusal, not a traceback."""
    cdd = tmp_path / "diag.cdd"
    cdd.write_text('<?xml version="1.0"?>\n<CANDELA><ECUDOC><DATATYPES></DATATYPES>'
                   '<ECU><VAR><DIAGINST></DIAGINST></VAR></ECU></ECUDOC></CANDELA>\n')
    res = run_cli("decode", "--dbc", str(cdd), str(edge_log))
    assert res.returncode == 2, res.stderr
    assert f"{cdd}: a diagnostics database (CDD) has no CAN messages" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_missing_log_is_a_clear_error(edge_dbc: Path, tmp_path: Path) -> None:
    res = run_cli("decode", "--dbc", str(edge_dbc), str(tmp_path / "nope.log"))
    assert res.returncode == 2 and "nope.log: file not found" in res.stderr
