"""SIGHUP (`systemctl reload`) re-reads the config file; a broken file is reported and changes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from agent.health import STATUS_FILE

ROOT = Path(__file__).resolve().parent.parent


def _wait(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _status(state: Path) -> dict:
    try:
        return json.loads((state / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def test_sighup_reloads_the_file_and_rejects_a_broken_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = {"vehicle_id": "reload", "state_dir": str(state),
           "buses": [{"name": "pt", "interface": "virtual", "channel": "reload-test", "simulate": True,
                      "databases": [str(ROOT / "config" / "dbc" / "powertrain.dbc")]}],
           "sink": {"type": "file", "path": "outbox"}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(path), "--no-progress"], cwd=ROOT,
                            env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: _status(state).get("buses", {}).get("pt", {}).get("frames", 0) > 0, "frames")
        assert _status(state)["agent"]["config_version"] == 0

        path.write_text(yaml.safe_dump({**cfg, "collection": {"default": {"policy": "exclude"},
                                                              "signals": [{"match": "EngineSpeed", "policy": "all"}]}}))
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: _status(state).get("agent", {}).get("config_version") == 1, "the reloaded config")
        filtered = _status(state)["buses"]["pt"]["filtered"]
        _wait(lambda: _status(state)["buses"]["pt"]["filtered"] > filtered, "frames of unwanted messages filtered")

        path.write_text(yaml.safe_dump({**cfg, "collection": {"default": {"policy": "exclude"},
                                                              "signals": [{"match": "EngineSpeed", "policy": "all"}]},
                                        "sink": {"type": "file", "path": "elsewhere"}}))
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: _status(state).get("agent", {}).get("config_version") == 2, "the second reload")

        path.write_text(yaml.safe_dump({**cfg, "batching": {"max_age_s": -5}}))
        proc.send_signal(signal.SIGHUP)
        time.sleep(2)
        frames = _status(state)["buses"]["pt"]["frames"]
        _wait(lambda: _status(state)["buses"]["pt"]["frames"] > frames, "frames still collected")
        assert _status(state)["agent"]["config_version"] == 2, "a broken file changes nothing"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    rejected = [e for e in events if e.get("event") == "config_reload_rejected"]
    assert len(rejected) == 1 and rejected[0]["file"] == str(path)
    assert any("batching.max_age_s" in e for e in rejected[0]["errors"]), rejected[0]
    assert any(e.get("event") == "config_file_reloaded" for e in events)
    restart = [e for e in events if e.get("event") == "config_reload_needs_restart"]
    assert len(restart) == 1 and restart[0]["settings"] == ["sink"], "a sink change waits for a restart, and says so"
