"""The local control channel (issue 18): the file sink gets desired/reported/methods without a broker.

A real agent process (simulated car, file sink); the test writes <state>/control/desired.json, reads
<state>/control/reported.json and calls methods through <state>/control/agent.sock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from agent.twin.local import call_method, control_dir, read_reported, write_desired
from tests.conftest import DATA, ROOT, run_cli
from tests.iothub_standin import wait_for


def outbox_files(state: Path) -> int:
    return len(list((state / "outbox").glob("*.jsonl")))


def test_local_desired_file_reported_file_and_methods(tmp_path: Path) -> None:
    state = tmp_path / "s"  # short: a unix socket path has at most 107 bytes
    cfg = {"vehicle_id": "car", "state_dir": str(state),
           "buses": [{"name": "pt", "interface": "virtual", "channel": "ctl-local", "simulate": True,
                      "databases": ["edge.dbc"]}],
           "batching": {"max_age_s": 0.3}}
    (tmp_path / "edge.dbc").write_bytes((DATA / "edge.dbc").read_bytes())
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(path)], cwd=ROOT,
                            env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (control_dir(state) / "agent.sock").exists(), 60, what="the control socket")
        status, doc = call_method(state, "get_status")
        assert status == 200 and doc["agent"]["vehicle_id"] == "car" and doc["control"]["channel"] == "local"

        # A hostile document first: refused as a whole, the agent goes on.
        (control_dir(state) / "desired.json").write_bytes(b"[" * 30_000)
        wait_for(lambda: read_reported(state).get("$desired", {}).get("ac") == 400, 30, what="poison refused")
        assert "nested deeper" in read_reported(state)["$desired"]["ad"]
        write_desired(state, {"$version": 3, "batching": {"max_samples": 321}, "sink": {"type": "mqtt"}})
        wait_for(lambda: (read_reported(state).get("batching") or {}).get("av") == 3, 30, what="ack")
        reported = read_reported(state)
        assert reported["batching"] == {"value": {"max_samples": 321}, "ac": 200, "av": 3, "ad": "applied"}
        assert reported["sink"]["ac"] == 400 and "not writable" in reported["sink"]["ad"]
        status, doc = call_method(state, "get_status")
        assert doc["control"]["desired_version"] == 3
        wait_for(lambda: "desired version 3" in run_cli("status", "--state-dir", str(state)).stdout, 30,
                 what="status shows the control plane")
        line = next(x for x in run_cli("status", "--state-dir", str(state)).stdout.splitlines()
                    if x.startswith("control"))
        assert line == ("control local: local, desired version 3, last document 200 received; 1 of 2 properties "
                        "refused, refused 1 documents / 1 properties")

        before = outbox_files(state)
        status, doc = call_method(state, "flush")
        assert status == 200 and doc["flushed"] is True
        wait_for(lambda: outbox_files(state) > before, 30, what="telemetry still flowing")
        assert call_method(state, "set_log_level", {"level": "debug", "duration_s": 10**30})[0] == 400
        assert call_method(state, "set_log_level", {"level": "debug", "duration_s": 60}) == (
            200, {"level": "debug", "duration_s": 60})
        assert call_method(state, "nope")[0] == 404
        res = run_cli("call", "set_log_level", '{"level": "info"}', "--state-dir", str(state))
        assert res.returncode == 0 and json.loads(res.stdout) == {"status": 200,
                                                                  "payload": {"level": "info", "duration_s": None}}
        res = run_cli("call", "set_log_level", '{"level": "loud"}', "--state-dir", str(state))
        assert res.returncode == 1 and json.loads(res.stdout)["status"] == 400
        assert call_method(state, "get_status", "x" * 20_000)[0] == 400  # a request over the 8 KB limit
        os.mkfifo(control_dir(state) / "fifo")
        os.replace(control_dir(state) / "fifo", control_dir(state) / "desired.json")  # must not block the agent
        before = outbox_files(state)
        assert call_method(state, "flush")[0] == 200
        wait_for(lambda: outbox_files(state) > before, 30, what="still serving after a FIFO")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert '"requested_level": "debug"' in err and '"requested_level": "info"' in err, "the requested level is logged under its own key"
    assert "Traceback" not in err
    saved = json.loads((state / "desired.json").read_text())
    assert saved == {"version": 3, "desired": {"batching": {"max_samples": 321}}}
