"""Crash safety of the real agent process: SIGKILL at random moments, restart, drain, nothing committed lost.

How the committed set is observed (it can only be seen from outside the agent):
  1. While the agent runs, an observer thread in the test reads the store file through its own read-only
     SQLite connection every ~30 ms and records every batch row it sees (id, sample count, payload hash, and
     the decoded samples). A row visible to another connection is committed (WAL readers never see an
     uncommitted transaction).
  2. After each SIGKILL, before the restart, the test reads the whole store once more: with the process dead,
     its rows are exactly the batches committed and not yet acknowledged at the moment of the kill.
Deliveries are recorded by the file sink's fault-injection knob `sink.fault.delivery_log`: one appended,
fsynced JSON line per acknowledged send (id, samples, payload hash), written before the ack returns, so
resends show up as repeated lines. The outbox files hold the delivered samples (a resend overwrites its
own file: same id, same name).

Assertions: every observed committed batch was delivered, with the same payload hash, and its samples are
in its outbox file; no id was ever delivered with two different payloads; the store is empty at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cantools
import pytest
import yaml

from agent.can.logformats import format_candump
from agent.codec import codec_by_content
from tests.conftest import DATA, ROOT

pytestmark = pytest.mark.durability

CYCLES = int(os.environ.get("CRASH_CYCLES", "20"))


def drive_log(path: Path, seconds: float, hz: int = 100) -> Path:
    """A candump log of one engine message at `hz`, values that change every frame."""
    db = cantools.database.load_file(DATA / "edge.dbc")
    eng = db.get_message_by_name("EngineData")
    lines = []
    for i in range(int(seconds * hz)):
        lines.append(format_candump(1700000000 + i / hz, "vcan0", eng.frame_id, eng.encode(
            {"EngineSpeed": 800 + (i % 4000), "CoolantTemp": 60 + i % 50, "Torque": i % 7 - 3, "Gear": i % 6})))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_config(path: Path, state: Path, log: Path, *, fault: dict | None) -> Path:
    data = {"vehicle_id": "crash-car", "state_dir": str(state),
            "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")], "replay": str(log), "replay_rate": 1.0}],
            "collection": {"default": {"policy": "all"},
                           "signals": [{"match": "Gear", "policy": "all", "priority": "high"}]},
            "batching": {"max_age_s": 0.2, "max_samples": 60},
            "store": {"max_bytes": 512 * 1024 * 1024},
            "sink": {"type": "file", "retry_initial_s": 0.05, "retry_max_s": 0.3,
                     **({"fault": fault} if fault else {"fault": {"delivery_log": "deliveries.jsonl"}})}}
    path.write_text(yaml.safe_dump(data))
    return path


class Observer:
    """Records every batch row visible in the store through a separate read-only connection."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.seen: dict[str, dict] = {}
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def snapshot(self) -> None:
        if not self.db_path.exists():
            return
        try:
            con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
            try:
                ids = [r[0] for r in con.execute("SELECT id FROM batches")]
                for bid in ids:
                    if bid in self.seen:
                        continue
                    row = con.execute("SELECT sample_count, content_type, payload FROM batches WHERE id = ?",
                                      (bid,)).fetchone()
                    if row is None:
                        continue  # acknowledged between the two reads
                    count, ctype, payload = row
                    _, samples = codec_by_content(ctype).decode(bytes(payload))
                    self.seen[bid] = {"samples": count, "sha256": hashlib.sha256(payload).hexdigest(),
                                      "content": sorted((s.t, s.signal, s.value) for s in samples)}
            finally:
                con.close()
        except sqlite3.OperationalError:
            pass  # the file is being created right now; the next poll sees it

    def _loop(self) -> None:
        while not self.stop.wait(0.03):
            self.snapshot()

    def __enter__(self) -> Observer:
        self.stop.clear()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join()


def start_agent(config: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"}
    with open(out, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--no-progress"],
                                cwd=ROOT, env=env, stdout=fh, stderr=fh)


def count_starts(agent_log: Path) -> int:
    return agent_log.read_text().count('"agent_start"') if agent_log.exists() else 0


def wait_for_start(agent_log: Path, before: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until this run logged agent_start (generous: the machine may be busy)."""
    end = time.monotonic() + timeout
    while count_starts(agent_log) <= before:
        assert proc.poll() is None and time.monotonic() < end, agent_log.read_text()[-3000:]
        time.sleep(0.05)


def test_sigkill_at_random_moments_loses_no_committed_batch(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "4242")))
    state = tmp_path / "state"
    log = drive_log(tmp_path / "drive.log", seconds=600)
    config = write_config(tmp_path / "agent.yaml", state, log,
                          fault={"fail_rate": 0.3, "ack_delay_ms": 20, "seed": 7, "delivery_log": "deliveries.jsonl"})
    agent_log = tmp_path / "agent.out"
    obs = Observer(state / "store.db")
    kills_with_pending = 0
    for _cycle in range(CYCLES):
        with obs:
            starts = count_starts(agent_log)
            proc = start_agent(config, agent_log)
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0.1, 1.0))  # during startup (opening the store, first batches)
            else:  # while running: batching, committing, sending, acknowledging
                wait_for_start(agent_log, starts, proc)
                time.sleep(rng.uniform(0.2, 2.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL, agent_log.read_text()[-3000:]
        before = len(obs.seen)
        obs.snapshot()  # the process is dead: the store now holds exactly what was committed and not acked
        con = sqlite3.connect(f"file:{state / 'store.db'}?mode=ro", uri=True)
        kills_with_pending += con.execute("SELECT COUNT(*) FROM batches").fetchone()[0] > 0
        con.close()
        assert len(obs.seen) >= before

    # Finally: no faults, a log that ends at once, so the agent drains and exits; repeat until empty.
    tiny = drive_log(tmp_path / "tiny.log", seconds=0.05)
    final = write_config(tmp_path / "final.yaml", state, tiny, fault=None)
    for _ in range(20):
        with obs:
            proc = start_agent(final, agent_log)
            assert proc.wait(120) == 0, agent_log.read_text()[-3000:]
        obs.snapshot()
        con = sqlite3.connect(f"file:{state / 'store.db'}?mode=ro", uri=True)
        left = con.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
        con.close()
        if left == 0:
            break
    assert left == 0

    deliveries = [json.loads(x) for x in (state / "deliveries.jsonl").read_text().splitlines()]
    by_id: dict[str, set[str]] = {}
    for d in deliveries:
        by_id.setdefault(d["id"], set()).add(d["sha256"])
    changed = {bid: shas for bid, shas in by_id.items() if len(shas) > 1}
    assert not changed, f"batch ids delivered with different contents: {changed}"

    assert len(obs.seen) > 20 and kills_with_pending > 0  # the test really observed commits and pending kills
    missing = [bid for bid in obs.seen if bid not in by_id]
    assert not missing, f"{len(missing)} committed batches never delivered, e.g. {missing[:5]}"
    for bid, row in obs.seen.items():
        assert by_id[bid] == {row["sha256"]}, bid
        lines = [json.loads(x) for x in (state / "outbox" / f"{bid}.jsonl").read_text().splitlines()]
        assert sorted((r["t"], r["signal"], r["value"]) for r in lines) == row["content"], bid
    resent = len(deliveries) - len(by_id)
    sys.stderr.write(f"cycles={CYCLES} committed_observed={len(obs.seen)} delivered_ids={len(by_id)} "
          f"same_id_resends={resent} kills_with_pending={kills_with_pending}\n")
