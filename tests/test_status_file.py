"""The status file on a full disk, and a status file that cannot be written: `vehicle-agent status`
keeps a whole document, and every failed write is counted and logged, never swallowed."""

from __future__ import annotations

import asyncio
import copy
import errno
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import health
from agent.app import Agent
from agent.config import load_config
from agent.health import StatusFileDamaged, not_alive_reason, read_status, write_status
from agent.status.text import render
from agent.status.view import gather
from agent.twin.local import call_method, control_dir, read_reported
from tests.conftest import DATA, ROOT, fill_disk, run_cli, wait_for

pytestmark = pytest.mark.durability


def _doc(pad: int, error: str | None = None) -> dict:
    return {"updated": 1.0, "agent": {}, "buses": {}, "sink": {}, "store": {"error": error},
            "tasks": {f"task{i}": "x" * 50 for i in range(pad // 60)}}


def test_a_status_of_several_pages_is_rewritten_on_a_full_disk_or_the_old_one_kept(small_fs: Path) -> None:
    write_status(small_fs, _doc(7000))
    fill_disk(small_fs / "ballast")
    # On a full disk the document grows (the store's error, the spill) past the pages it had.
    grown = _doc(9000, error="database or disk is full")
    write_status(small_fs, grown)
    assert read_status(small_fs) == grown
    # One that does not fit at all is refused as a full disk; the previous status stays whole.
    with pytest.raises(OSError) as refused:
        write_status(small_fs, _doc(60_000))
    assert refused.value.errno == errno.ENOSPC and "previous status is kept" in str(refused.value)
    assert read_status(small_fs) == grown
    assert sorted(p.name for p in small_fs.iterdir()) == ["ballast", "status.json"]  # no temporary file left
    os.remove(small_fs / "ballast")
    write_status(small_fs, _doc(60_000))
    assert read_status(small_fs) == _doc(60_000)


def test_a_status_file_that_cannot_be_written_is_counted_reported_and_logged_at_the_stop(tmp_path: Path) -> None:
    state = tmp_path / "s"  # short: a unix socket path has at most 107 bytes
    (state / "status.json").mkdir(parents=True)  # whatever the cause, the write fails
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "vehicle_id": "car", "state_dir": str(state),
        "buses": [{"name": "pt", "interface": "virtual", "channel": "status-file", "simulate": True,
                   "databases": [str(DATA / "edge.dbc")]}]}))
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--no-progress"], cwd=ROOT,
                            env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (control_dir(state) / "agent.sock").exists(), 60, what="the control socket")
        failures = wait_for(lambda: (call_method(state, "get_status")[1].get("status_file") or {}).get("write_failures"),
                            30, what="status writes counted")
        assert failures >= 1
        reported = wait_for(lambda: read_reported(state).get("status_file"), 30, what="reported status_file")
        assert reported["write_failures"] >= 1 and "IsADirectoryError" in reported["last_error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    events = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    failed = [e for e in events if e["event"] == "status_write_failed"]
    assert failed[0]["when"] == "running" and failed[-1]["when"] == "stop"  # once while running, and at the stop
    assert len(failed) == 2 and failed[-1]["failures"] > failures


def test_a_torn_status_file_is_named_not_a_traceback(tmp_path: Path) -> None:
    """A status file cut short (power lost during an in-place rewrite on a full disk): `vehicle-agent
    status` says so and shows what the store file says, `--check` is unhealthy with the reason."""
    write_status(tmp_path, _real_status())
    data = (tmp_path / "status.json").read_bytes().rstrip()  # the document, without its padding
    (tmp_path / "status.json").write_bytes(data[:len(data) // 2])
    res = run_cli("status", "--state-dir", str(tmp_path))
    assert res.returncode == 0 and "Traceback" not in res.stderr
    assert res.stdout.startswith(f"status file damaged, not used: {tmp_path / 'status.json'} is not JSON")
    check = run_cli("status", "--state-dir", str(tmp_path), "--check")
    assert check.returncode == 1 and "unhealthy: status file damaged" in check.stderr
    doc = json.loads(run_cli("status", "--state-dir", str(tmp_path), "--json").stdout)
    assert "is not JSON" in doc["status_file_damaged"] and doc["running"] is False


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                     | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=12)


@functools.cache
def _real_status() -> dict:
    """The status document of a real agent (built, not run): what `vehicle-agent status` normally reads."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "agent.yaml"
        config.write_text(yaml.safe_dump({
            "vehicle_id": "car", "state_dir": str(Path(tmp) / "state"),
            "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")], "replay": str(DATA / "edge.log")}]}))

        async def build() -> dict:
            return Agent(load_config(config)).status()
        return json.loads(orjson.dumps(asyncio.run(build()), option=orjson.OPT_NON_STR_KEYS))


@st.composite
def _damaged_status(draw: st.DrawFn) -> bytes:
    """A real status document with one value somewhere replaced, or any JSON, or any bytes."""
    kind = draw(st.sampled_from(["replace", "replace", "replace", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=120))
    if kind == "json":
        return json.dumps(draw(_JSON)).encode()
    doc = copy.deepcopy(_real_status())
    node, depth = doc, draw(st.integers(0, 3))
    for _ in range(depth):
        children = [k for k, v in node.items() if isinstance(v, dict) and v]
        if not children:
            break
        node = node[draw(st.sampled_from(sorted(children)))]
    node[draw(st.sampled_from(sorted(node)))] = draw(_JSON)
    return json.dumps(doc).encode()


@settings(max_examples=100, deadline=None)
@given(content=_damaged_status())
def test_any_status_file_is_shown_or_refused_with_why(content: bytes) -> None:
    """Whatever status.json holds (a torn in-place write after a power loss, flash damage), `vehicle-agent
    status` shows it or says why it cannot, `--check` answers, `--json` prints: never a traceback."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(health, "READ_RETRY_S", 0.0)  # no torn write is under way here
        state = Path(tmp)
        (state / "status.json").write_bytes(content)
        view = gather(state)
        assert view is not None
        orjson.dumps(view.doc, option=orjson.OPT_NON_STR_KEYS)  # --json
        try:
            render(view)
        except StatusFileDamaged as exc:
            assert "cannot be shown" in str(exc)
        try:
            why = not_alive_reason(read_status(state))  # --check
        except StatusFileDamaged as exc:
            assert view.damaged == str(exc)
        else:
            assert why is None or why
