"""Start-up checks of `vehicle-agent run` (issue 14, items 2 and 3): a state directory the agent cannot
write, or one another agent already runs on, stops it at once with exit code 2 and a log line that
names the path, the uid and the fix; a read-only disk does not (the memory spill rides it out).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATA, ROOT, run_cli

AGENT_UID = 10001  # the container's user; the directory Docker creates for a bind mount belongs to root


def _config(tmp_path: Path, state: Path, **extra) -> Path:
    cfg = {"vehicle_id": "startup", "state_dir": str(state), "batching": {"max_age_s": 0.5},
           "buses": [{"name": "pt", "interface": "virtual", "channel": f"startup-{tmp_path.name}", "simulate": True,
                      "databases": [str(DATA / "edge.dbc")]}], **extra}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--no-progress"], cwd=ROOT,
                            env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_state_directory_owned_by_another_user_exits_2_naming_path_uid_and_fix(tmp_path: Path) -> None:
    """As in a container whose bind mount Docker created: the directory exists but belongs to someone else.

    The test runs as root, so the agent runs as root without CAP_DAC_OVERRIDE (setpriv): file
    permissions then apply to it as they do to the container's uid 10001.
    """
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to run the agent without CAP_DAC_OVERRIDE")
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chown(state, AGENT_UID, AGENT_UID)
    config = _config(tmp_path, state)
    res = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m", "agent",
                          "run", "--config", str(config), "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"})
    assert res.returncode == 2, res.stderr[-2000:]
    (event,) = [e for e in _events(res.stderr) if e["level"] == "error"]
    assert event["event"] == "state_dir_unusable" and event["path"] == str(state)
    assert event["uid"] == 0 and "Permission denied" in event["problem"]
    assert f"uid {AGENT_UID}" in event["owner"] and "mode 0755" in event["owner"]
    assert f"chown -R 0:0 {state}" in event["fix"]
    assert "Traceback" not in res.stderr and not list(state.iterdir())


def test_a_state_directory_that_cannot_be_created_exits_2(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    state = tmp_path / "a-file" / "state"
    res = run_cli("run", "--config", str(_config(tmp_path, state)), "--no-progress", timeout=60)
    assert res.returncode == 2, res.stderr[-2000:]
    (event,) = [e for e in _events(res.stderr) if e["level"] == "error"]
    assert event["event"] == "state_dir_unusable" and event["path"] == str(state)
    assert "cannot create the state directory" in event["problem"] and "Not a directory" in event["problem"]


@pytest.mark.parametrize(("name", "make", "problem"), [
    ("store.db", Path.mkdir, "a directory where the agent writes a file"),
    ("store.db-wal", Path.mkdir, "a directory where the agent writes a file"),
    ("outbox", lambda p: p.write_text("x"), "a file where the agent keeps a folder"),
])
def test_a_directory_where_the_store_goes_exits_2(tmp_path: Path, name: str, make, problem: str) -> None:
    """A directory in the store's place passed the start-up check (a folder is writable), so the agent
    ran with a store it could never open: every batch was held in memory and dropped at the stop."""
    state = tmp_path / "state"
    state.mkdir()
    make(state / name)
    res = run_cli("run", "--config", str(_config(tmp_path, state)), "--no-progress", timeout=60)
    assert res.returncode == 2, res.stderr[-2000:]
    (event,) = [e for e in _events(res.stderr) if e["level"] == "error"]
    assert (event["event"], event["path"], event["problem"]) == ("state_dir_unusable", str(state / name), problem)
    assert event["fix"] == f"remove {state / name} (the agent creates it)"


def test_paths_are_printed_normalised(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    config = _config(tmp_path / "config", Path("../state"))
    res = run_cli("run", "--config", str(config), "--no-progress", timeout=60,
                  env={"VEHICLE_AGENT__buses": json.dumps([{"name": "pt", "databases": [str(DATA / "edge.dbc")],
                                                              "replay": str(DATA / "edge.log")}])})
    assert res.returncode == 0, res.stderr[-2000:]
    start = next(e for e in _events(res.stderr) if e["event"] == "agent_start")
    assert start["store"] == str(tmp_path / "state" / "store.db")
    assert "/../" not in res.stderr


def test_a_second_agent_on_the_same_state_directory_exits_2_naming_the_first(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = _config(tmp_path, state)
    first = _start(config)
    try:
        deadline = time.monotonic() + 60
        while not (state / "status.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first agent did not start"
            time.sleep(0.1)
        second = run_cli("run", "--config", str(config), "--no-progress", timeout=60)
        assert second.returncode == 2, second.stderr[-2000:]
        (event,) = [e for e in _events(second.stderr) if e["level"] == "error"]
        assert event["event"] == "state_dir_in_use" and event["pid"] == str(first.pid)
        assert event["path"] == str(state) and f"pid {first.pid}" in event["problem"]
        assert first.poll() is None, "the first agent runs on"
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err[-2000:]
    # the lock went with the first process: the directory is free again
    (tmp_path / "replay.yaml").write_text(yaml.safe_dump({
        "state_dir": str(state), "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")],
                                            "replay": str(DATA / "edge.log")}]}))
    again = run_cli("run", "--config", str(tmp_path / "replay.yaml"), "--no-progress", timeout=60)
    assert again.returncode == 0, again.stderr[-2000:]


def test_the_first_decoded_frame_of_each_bus_is_logged_with_the_time_since_process_start(tmp_path: Path) -> None:
    """Start-up time as an operator reads it (issue 19): one `first_frame_decoded` line per bus, after
    agent_start, with the seconds since the process started; none for a bus that decoded nothing."""
    cfg = {"vehicle_id": "startup", "state_dir": str(tmp_path / "state"), "log_level": "info",
           "buses": [{"name": "pt", "replay": str(DATA / "edge.log"), "databases": [str(DATA / "edge.dbc")]},
                     {"name": "empty", "replay": str(tmp_path / "empty.log"), "databases": [str(DATA / "edge.dbc")]}]}
    (tmp_path / "empty.log").write_text("")
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _start(path)
    _, err = proc.communicate(timeout=120)  # the agent exits once every replay has ended
    assert proc.returncode == 0, err[-2000:]
    events = _events(err)
    names = [e["event"] for e in events]
    first = [e for e in events if e["event"] == "first_frame_decoded"]
    assert [e["bus"] for e in first] == ["pt"]
    assert names.index("agent_start") < names.index("first_frame_decoded")
    assert 0 < first[0]["since_process_start_s"] <= first[0]["first_drain_s"] < 120 and first[0]["cpu_s"] > 0
    assert list((tmp_path / "state" / "cache").glob("*.pickle")), "the parse is kept for the next start"


@pytest.mark.parametrize(("sink", "file", "expected"), [
    ("iothub", "missing", "$VEHICLE_AGENT_IOTHUB_CONNECTION_STRING_FILE names {path}: cannot read it: No such file"),
    ("iothub", "directory", "$VEHICLE_AGENT_IOTHUB_CONNECTION_STRING_FILE names {path}: cannot read it: Is a directory"),
    ("iothub", "empty", "$VEHICLE_AGENT_IOTHUB_CONNECTION_STRING_FILE names {path}: the file is empty"),
    ("iothub", "binary", "$VEHICLE_AGENT_IOTHUB_CONNECTION_STRING_FILE names {path}: not UTF-8 text"),
    ("iothub", "in config, empty", "sink.iothub.connection_string_file names {path}: the file is empty"),
    ("iothub", "missing, and the config names another", "$VEHICLE_AGENT_IOTHUB_CONNECTION_STRING_FILE names {path}: "
     "cannot read it: No such file"),  # the variable wins over the config
    ("iothub", "none", "set $VEHICLE_AGENT_IOTHUB_CONNECTION_STRING, or $VEHICLE_AGENT_IOTHUB_CONNECTION_STRING_FILE"),
    ("mqtt", "missing", "$VEHICLE_AGENT_MQTT_PASSWORD_FILE names {path}: cannot read it: No such file"),
])
def test_a_secret_file_that_cannot_be_used_exits_2_naming_the_variable_and_file(tmp_path: Path, sink: str, file: str,
                                                                              expected: str) -> None:
    """A `*_FILE` variable (or the config) naming a secret file that is not there, not readable, not text
    or empty is a deployment mistake: `vehicle-agent run` stops at once, before connecting or writing
    anything, with one error naming the variable and the file (and never a retry loop that looks alive)."""
    path = tmp_path / "secret"
    if file == "directory":
        path.mkdir()
    elif file.endswith("empty"):
        path.write_text("\n")
    elif file == "binary":
        path.write_bytes(b"\xff\xfe HostName=x")
    kind = "MQTT_PASSWORD" if sink == "mqtt" else "IOTHUB_CONNECTION_STRING"
    env = {f"VEHICLE_AGENT_{kind}": "", f"VEHICLE_AGENT_{kind}_FILE": "" if file.startswith(("in config", "none"))
           else str(path)}
    (tmp_path / "other").write_text("HostName=h;DeviceId=d;SharedAccessKey=a2V5")
    in_config = {"in config, empty": str(path), "missing, and the config names another": str(tmp_path / "other")}
    section = {"mqtt": {"username": "car", "port": 1}} if sink == "mqtt" else {
        "iothub": {"connection_string_file": in_config[file]} if file in in_config else {}}
    state = tmp_path / "state"
    res = run_cli("run", "--config", str(_config(tmp_path, state, sink={"type": sink, **section})), "--no-progress",
                  timeout=60, env=env)
    assert res.returncode == 2, res.stderr[-2000:]
    (event,) = [e for e in _events(res.stderr) if e["level"] == "error"]
    assert event["event"] == "sink_secret_unusable" and event["sink"] == sink
    assert expected.format(path=path) in event["problem"], event["problem"]
    assert "Traceback" not in res.stderr and not state.exists(), "stopped before anything ran"
