"""SIGHUP (`systemctl reload`) re-reads the config file; a broken file is reported and changes nothing."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import yaml

from agent.health import STATUS_FILE
from tests.conftest import start_logged_agent, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _status(state: Path) -> dict:
    try:
        return json.loads((state / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _outbox_rows(outbox: Path) -> list[dict]:
    rows = []
    for f in outbox.glob("*.jsonl"):
        try:
            rows += [json.loads(line) for line in f.read_text().splitlines()]
        except (OSError, ValueError):
            continue  # being written
    return rows


def test_sighup_reloads_the_file_and_rejects_a_broken_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = {"vehicle_id": "reload", "state_dir": str(state),
           "buses": [{"name": "pt", "interface": "virtual", "channel": "reload-test", "simulate": True,
                      "databases": [str(ROOT / "config" / "dbc" / "powertrain.dbc")]}],
           "batching": {"max_age_s": 0.5},
           "sink": {"type": "file", "path": "outbox"}}
    only_speed = {"default": {"policy": "exclude"}, "signals": [{"match": "EngineSpeed", "policy": "all"}]}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc, lines, reader = start_logged_agent(path)

    def logged(event: str) -> list[dict]:
        return [e for e in (json.loads(x) for x in list(lines) if x.startswith("{")) if e.get("event") == event]

    outbox = state / "outbox"
    try:
        wait_for(lambda: _status(state).get("buses", {}).get("pt", {}).get("frames", 0) > 0, timeout=60, what="frames")
        assert _status(state)["agent"]["config_version"] == 0
        wait_for(lambda: len({r["signal"] for r in _outbox_rows(outbox)}) > 1, timeout=60, what="every signal collected")

        path.write_text(yaml.safe_dump({**cfg, "collection": only_speed}))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _status(state).get("agent", {}).get("config_version") == 1, timeout=60, what="the reloaded config")
        filtered = _status(state)["buses"]["pt"]["filtered"]
        wait_for(lambda: _status(state)["buses"]["pt"]["filtered"] > filtered, timeout=60, what="frames of unwanted messages filtered")

        path.write_text(yaml.safe_dump({**cfg, "collection": only_speed, "sink": {"type": "file", "path": "elsewhere"}}))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _status(state).get("agent", {}).get("config_version") == 2, timeout=60, what="the second reload")

        path.write_text(yaml.safe_dump({**cfg, "batching": {"max_age_s": -5}}))  # and every signal wanted again
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: logged("config_reload_rejected"), timeout=60, what="the broken file rejected")
        rejected_at = time.time()
        wait_for(lambda: [r for r in _outbox_rows(outbox) if r["t"] > rejected_at + 1], timeout=60, what="samples after the rejection")
        after = {r["signal"] for r in _outbox_rows(outbox) if r["t"] > rejected_at}
        assert after == {"EngineSpeed"}, "the rules before the broken file still apply"
        assert _status(state)["agent"]["config_version"] == 2, "a broken file changes nothing"
    finally:
        proc.terminate()
        proc.wait(60)
        reader.join(10)
    err = "".join(lines)
    assert proc.returncode == 0, err[-2000:]
    rejected = logged("config_reload_rejected")
    assert len(rejected) == 1 and rejected[0]["file"] == str(path)
    assert any("batching.max_age_s" in e for e in rejected[0]["errors"]), rejected[0]
    assert logged("config_file_reloaded")
    restart = logged("config_reload_needs_restart")
    assert len(restart) == 1 and restart[0]["settings"] == ["sink"], "a sink change waits for a restart, and says so"


def test_an_unexpected_failure_during_a_reload_is_a_logged_event_and_keeps_the_running_config(tmp_path: Path) -> None:
    """SIGHUP's handler runs on the loop: any failure in it is the structured event, not asyncio's
    bare traceback, and the running config stays."""
    from types import SimpleNamespace

    from structlog.testing import capture_logs

    from agent.reload import reload_from_file

    def rebase(_data: object) -> None:
        raise RuntimeError("a bug while laying the desired state over the file")

    config = tmp_path / "agent.yaml"
    config.write_text("vehicle_id: v\nsink: {type: file}\n")
    running = SimpleNamespace(cfg=object(), desired=SimpleNamespace(rebase=rebase))
    with capture_logs() as logs:
        assert reload_from_file(running, config) is None
    (event,) = [e for e in logs if e["event"] == "config_reload_failed"]
    assert event["file"] == str(config) and "a bug while laying" in event["error"]
    assert event["action"] == "keeping the running config"
