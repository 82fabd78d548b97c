"""The file sink's outbox is bounded (issue 14, item 7): `sink.max_bytes`, oldest batches removed and counted."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import CONFIG_DIR, run_cli

MAX = 1_200_000


def _run(tmp_path: Path) -> dict:
    cfg = {"vehicle_id": "retention", "state_dir": str(tmp_path / "state"),
           "collection": {"default": {"policy": "all"}}, "batching": {"max_age_s": 0.2},
           "buses": [{"name": "powertrain", "databases": [str(CONFIG_DIR / "dbc" / "powertrain.dbc")],
                      "replay": str(CONFIG_DIR / "sample-drive.log"), "replay_rate": 10}],
           "sink": {"type": "file", "max_bytes": MAX, "fault": {"delivery_log": "delivered.jsonl"}}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_cli("run", "--config", str(path), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(run_cli("status", "--json", "--state-dir", str(tmp_path / "state")).stdout)


def _outbox(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "state" / "outbox").iterdir() if not p.name.startswith("."))


def test_the_outbox_keeps_the_newest_batches_within_max_bytes(tmp_path: Path) -> None:
    doc = _run(tmp_path)
    delivered = [json.loads(x)["id"] for x in (tmp_path / "state" / "delivered.jsonl").read_text().splitlines()]
    files = _outbox(tmp_path)
    kept = [p.name.split(".")[0] for p in files]
    assert sum(p.stat().st_size for p in files) <= MAX
    assert kept == sorted(delivered)[-len(kept):], "the newest batches stay, the oldest went"
    sink = doc["sink"]
    assert sink["removed_batches"] == len(delivered) - len(kept) > 0
    assert sink["outbox_bytes"] == sum(p.stat().st_size for p in files) and sink["max_bytes"] == MAX
    human = run_cli("status", "--state-dir", str(tmp_path / "state")).stdout
    assert f"oldest {sink['removed_batches']} batches removed (sink.max_bytes)" in human
    # a second run counts what the first left: the bound holds across restarts
    _run(tmp_path)
    assert sum(p.stat().st_size for p in _outbox(tmp_path)) <= MAX
