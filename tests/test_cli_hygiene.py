"""The command line as a user meets it (issue 14, item 5): no traceback for a closed pipe, a missing
file or Ctrl-C; errors blamed on the environment variable that caused them; warnings where a
command would otherwise succeed silently at doing nothing; log lines never written over the TTY's
progress line."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from agent.codec import ColumnarCodec
from tests.conftest import CONFIG_DIR, DATA, ROOT, run_cli

DBCS = [str(CONFIG_DIR / "dbc" / f"{n}.dbc") for n in ("powertrain", "chassis", "body")]


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agent", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"}, **kwargs)


def _read_one_line_then_close(proc: subprocess.Popen) -> tuple[int, str]:
    """What `| head -1` does: read a line, close the pipe, let the writer find out."""
    assert proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(60), err


def test_decode_into_a_closed_pipe_ends_quietly() -> None:
    args = ["decode", *(x for d in DBCS for x in ("--dbc", d)), "--labels", str(CONFIG_DIR / "sample-drive.log")]
    rc, err = _read_one_line_then_close(_cli(*args))
    assert rc == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_decode_batch_into_a_closed_pipe_and_of_a_missing_file(tmp_path: Path) -> None:
    batch = tmp_path / "big.columnar"
    ts = [1700000000 + i / 100 for i in range(20000)]
    batch.write_bytes(ColumnarCodec().encode({("pt", "Engine", "Speed"): (ts, [float(i) for i in range(20000)])},
                                             vehicle="car"))
    rc, err = _read_one_line_then_close(_cli("decode-batch", str(batch)))
    assert rc == 141 and "Traceback" not in err, err
    res = run_cli("decode-batch", str(tmp_path / "missing.columnar"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == f"error: {tmp_path / 'missing.columnar'}: No such file or directory"


def test_ctrl_c_while_decode_waits_for_stdin() -> None:
    proc = _cli("decode", "--dbc", DBCS[0], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while "pipe" not in Path(f"/proc/{proc.pid}/wchan").read_text():  # blocked reading its stdin
            assert time.monotonic() < deadline and proc.poll() is None, "decode never waited for its input"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err.decode() and "interrupted" in err.decode()


def test_decode_with_the_wrong_database_warns_and_fails() -> None:
    res = run_cli("decode", "--dbc", DBCS[2], str(CONFIG_DIR / "sample-drive.log"))
    assert res.returncode == 1 and res.stdout == ""
    warning = [json.loads(x) for x in res.stderr.splitlines() if "no_frame_decoded" in x][0]
    assert warning["level"] == "warning" and warning["frames"] == 4560 and "--dbc" in warning["hint"]


def test_an_error_of_an_environment_override_names_the_variable() -> None:
    res = run_cli("check-config", env={"VEHICLE_AGENT__BATCHING__MAX_AGE": "5"})
    assert res.returncode == 2
    assert res.stderr == ("environment variable VEHICLE_AGENT__BATCHING__MAX_AGE (over config/agent.yaml): "
                          "batching.max_age: Extra inputs are not permitted\n")
    res = run_cli("run", env={"VEHICLE_AGENT__BATCHING__MAX_AGE_S": "[5"})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("environment variable VEHICLE_AGENT__BATCHING__MAX_AGE_S: not a YAML value")
    res = run_cli("check-config", env={"VEHICLE_AGENT__BATCHING__MAX_AGE_S": "-1"})
    assert res.returncode == 2 and res.stderr.startswith(
        "environment variable VEHICLE_AGENT__BATCHING__MAX_AGE_S (over config/agent.yaml): batching.max_age_s:")
    res = run_cli("check-config", env={"VEHICLE_AGENT__SINK": "file", "VEHICLE_AGENT__SINK__PATH": "x"})
    assert res.returncode == 2 and "Traceback" not in res.stderr and "VEHICLE_AGENT__SINK__PATH" in res.stderr


def test_check_config_warns_about_rules_that_match_nothing(tmp_path: Path) -> None:
    cfg = yaml.safe_load((CONFIG_DIR / "agent.yaml").read_text())
    cfg["collection"]["signals"] += [{"match": "VehicleSpd", "policy": "all"},
                                     {"match": "VehicleSpeed", "policy": "exclude"}]
    cfg["buses"] = [{**b, "databases": [str(CONFIG_DIR / d) for d in b["databases"]]} for b in cfg["buses"]]
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_cli("check-config", str(path))
    assert res.returncode == 0 and res.stdout.startswith(f"{path}: OK")
    n = len(cfg["collection"]["signals"])
    assert res.stderr.splitlines() == [
        f"{path}: warning: collection.signals[{n - 2}] (match 'VehicleSpd') matches no signal of the buses' databases",
        f"{path}: warning: collection.signals[{n - 1}] (match 'VehicleSpeed') never applies: "
        "earlier rules take every signal it matches"]
    assert run_cli("check-config").stderr == ""  # the bundled config: every rule matches


def test_status_check_says_why_it_failed(tmp_path: Path) -> None:
    res = run_cli("status", "--check", "--state-dir", str(tmp_path))
    assert res.returncode == 1
    assert res.stderr == f"unhealthy: no status file in {tmp_path}: the agent has not run with this state directory\n"
    cfg = {"state_dir": str(tmp_path / "state"),
           "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")], "replay": str(DATA / "edge.log")}]}
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(cfg))
    ran = run_cli("run", "--config", str(tmp_path / "agent.yaml"))
    assert ran.returncode == 0, ran.stderr[-2000:]
    res = run_cli("status", "--check", "--state-dir", str(tmp_path / "state"), "--max-age", "3600")
    assert res.returncode == 1 and "is not running" in res.stderr and res.stderr.startswith("unhealthy: pid ")


def test_log_lines_are_not_written_over_the_progress_line(tmp_path: Path) -> None:
    """On a TTY: the progress line is cleared before a log line and drawn again below it; Ctrl-C stops cleanly."""
    cfg = {"vehicle_id": "tty", "state_dir": str(tmp_path / "state"), "summary_interval_s": 1,
           "buses": [{"name": "pt", "interface": "virtual", "channel": "tty-test", "simulate": True,
                      "databases": [DBCS[2]]}]}
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(cfg))
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "VEHICLE_AGENT_LOG_FORMAT"}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(tmp_path / "agent.yaml")],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env={**env, "TERM": "dumb"})
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while out.count(b"summary") < 2:
            assert time.monotonic() < deadline and proc.poll() is None, out.decode(errors="replace")[-2000:]
            if select.select([master], [], [], 0.5)[0]:
                out += os.read(master, 65536)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        while select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = out.decode(errors="replace")
    assert proc.returncode == 0 and "Traceback" not in text
    assert "frames/s |" in text and "SIMULATED" in text
    for line in text.replace("\r\n", "\n").split("\n"):
        visible = line.rsplit("\r", 1)[-1]  # what stays on screen of this line
        if "summary" in line:
            assert "frames/s |" not in visible, repr(line)
    assert text.rstrip().split("\n")[-1].count("frames/s |") == 1 or "agent_stopped" in text.rstrip().split("\n")[-1]
