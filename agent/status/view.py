"""What `vehicle-agent status` reads: the status document of a state directory, from any process.

The running agent rewrites `status.json` every second; once it stopped, the store file is the
truth about depth and counters (the last status may be a second stale), read read-only. The
document is read as JSON, not as the types of agent.status.document: the file may have been written
by another version of the agent (before an update), or be damaged, and is shown as far as it goes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.health import STATUS_FILE, StatusFileDamaged, losses, not_alive_reason, read_status, status_age
from agent.status.document import StatusDocument
from agent.store import read_stats

# What a status document that passed read_status's shape check can still hold wrong, deeper down.
DAMAGE = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)
# What `vehicle-agent status --json` adds to the status document (StatusView.as_json).
CLI_KEYS = ("running", "status_age_s", "status_file_damaged")


@dataclass(slots=True)
class StatusView:
    doc: dict[str, Any]
    alive: bool
    age: float | None  # seconds since the agent wrote the status; None: no status file
    damaged: str | None = None  # why the status file was not used (the store file's counters are shown)

    def as_json(self) -> dict[str, Any]:
        """What `vehicle-agent status --json` prints: the document, whether the agent runs, the status's
        age, and why the status file was not used if it was not (CLI_KEYS)."""
        running, age, damaged = CLI_KEYS
        return {**self.doc, running: self.alive, age: None if self.age is None else round(self.age, 1),
                **({damaged: self.damaged} if self.damaged else {})}


def gather(state_dir: Path, store_path: Path | None = None) -> StatusView | None:
    """The status of a state directory; None when no agent ever ran with it (no status, no store).
    A status file that is not a status document is reported (`damaged`), never a traceback."""
    try:
        doc: dict[str, Any] | None = read_status(state_dir)
    except FileNotFoundError:
        doc = None
    except StatusFileDamaged as exc:
        return _gather(state_dir, store_path, None, str(exc))
    try:
        return _gather(state_dir, store_path, doc, None)
    except DAMAGE as exc:
        return _gather(state_dir, store_path, None, f"{state_dir / STATUS_FILE}: {type(exc).__name__}: {exc}")


def _gather(state_dir: Path, store_path: Path | None, doc: dict[str, Any] | None,
            damaged: str | None) -> StatusView | None:
    alive = doc is not None and not_alive_reason(doc) is None
    if store_path is None:
        store_path = Path(doc["store"]["path"]) if doc and doc.get("store", {}).get("path") else state_dir / "store.db"
    if not alive:
        if doc is None and not store_path.exists() and damaged is None:
            return None
        if store_path.exists():
            try:
                fresh = read_stats(store_path).as_dict()
            except sqlite3.Error as exc:
                fresh = {"error": f"cannot read {store_path}: {exc}"}
            doc = doc or {"agent": {}, "buses": {}, "sink": {}}
            doc["store"] = {**doc.get("store", {}), **fresh, "path": str(store_path)}
            doc["losses"] = losses(doc["store"].get("counters", {}), doc["store"].get("spill", {}), doc["buses"],
                                   doc.get("sink", {}))
        doc = doc or {"agent": {}, "buses": {}, "sink": {}, "store": {"error": f"no store at {store_path}"}}
    assert doc is not None  # alive: read from the status file
    return StatusView(doc, alive, status_age(doc) if "updated" in doc else None, damaged)


def typed(status_json: Mapping[str, Any]) -> StatusDocument:
    """The typed document of a status in JSON: status.json, `get_status`'s answer or what `vehicle-agent
    status --json` prints (its CLI_KEYS left out). ShapeError when it is not this version's document."""
    return StatusDocument.from_dict({k: v for k, v in status_json.items() if k not in CLI_KEYS})
