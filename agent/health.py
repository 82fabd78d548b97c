"""Health: the status document, written atomically to the state directory every second.

`vehicle-agent status` reads that file, so it works while the agent runs, from another process,
without a socket; `status --check` is the container HEALTHCHECK (is the file fresh?).
"""

from __future__ import annotations

import errno
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson

from agent.model import Priority

STATUS_FILE = "status.json"

# Every way the agent can drop data, each one counter: the `losses` section of the status document and of
# the reported properties, the table in docs/durability.md, and tests/test_losses.py keep to this list.
STORE_LOSSES = ("evicted", "expired", "too_large", "quarantined")  # store counters <kind>[_<prio>]_<unit>
BY_PRIORITY = ("evicted", "expired")
BUS_LOSSES = {  # loss name -> the bus counter it sums over every bus
    "decode_error_frames": "decode_errors",
    "refused_timestamp_frames": "refused_timestamps",
    "refused_values": "refused_values",
    "kernel_dropped_frames": "kernel_drops",
    "backlog_dropped_frames": "backlog_drops",
    "unreadable_frames": "unreadable_frames",
    "replay_bad_lines": "bad_lines",
}
# the counters of these a source keeps: a bus's sum over every source it had this run (a swap restarts a source)
SOURCE_LOSSES = ("lost_frames", "kernel_drops", "backlog_drops", "unreadable_frames", "bad_lines")
LOSSES = (*(f"{kind}_{unit}" for kind in (*STORE_LOSSES, "spill_dropped") for unit in ("batches", "samples")),
          *BUS_LOSSES, "outbox_removed_batches")


def losses(store_counters: dict[str, int], spill: dict[str, Any], buses: dict[str, dict[str, Any]],
           sink: dict[str, Any]) -> dict[str, int]:
    """The `losses` section: every counter of LOSSES, zero when nothing was lost that way."""
    out = {}
    for kind in STORE_LOSSES:
        for unit in ("batches", "samples"):
            names = [f"{kind}_{p.name}_{unit}" for p in Priority] if kind in BY_PRIORITY else [f"{kind}_{unit}"]
            out[f"{kind}_{unit}"] = sum(store_counters.get(name, 0) for name in names)
    out["spill_dropped_batches"] = spill.get("dropped_batches", 0)
    out["spill_dropped_samples"] = spill.get("dropped_samples", 0)
    for name, counter in BUS_LOSSES.items():
        out[name] = sum(int(bus.get(counter) or 0) for bus in buses.values())
    out["outbox_removed_batches"] = int(sink.get("removed_batches") or 0)  # file sink, this run
    return out


def _reserved(size: int) -> int:
    """The bytes a status file of `size` takes on disk: half again (at least a page), in whole pages.
    A document grows exactly when the disk is full (the error, the spill), and must still fit."""
    return -(-(size + max(4096, size // 2)) // 4096) * 4096


def write_status(state_dir: Path, doc: dict[str, Any]) -> None:
    """Replace the status file atomically (readers never see half a document); on a full disk,
    overwrite it in place within the space it already holds.

    The file is padded with spaces (JSON whitespace) to more than the document needs, so the blocks
    it owns are enough for a larger document later: on a full disk the new document is written over
    them without truncating or allocating anything (tmpfs, ext4, f2fs in its reserved space; a
    copy-on-write file system such as btrfs may still refuse). A document that does not fit even
    written compactly raises ENOSPC and leaves the previous status whole; the caller counts it.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    try:
        tmp.write_bytes(data.ljust(_reserved(len(data))))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno != errno.ENOSPC or not path.exists():
            raise
        _overwrite_in_place(path, data, doc)


def _overwrite_in_place(path: Path, data: bytes, doc: dict[str, Any]) -> None:
    """Disk full is exactly when the status matters most: write over the blocks the file holds, never
    past its size (a reader may see a torn document for a moment, and retries)."""
    with open(path, "r+b") as fh:
        size = os.fstat(fh.fileno()).st_size
        if len(data) > size:
            data = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
        if len(data) > size:
            raise OSError(errno.ENOSPC, f"disk full, and the status ({len(data)} B) is larger than the "
                                        f"{size} B its file holds; the previous status is kept", str(path))
        fh.write(data.ljust(size))


class StatusFileDamaged(ValueError):
    """The status file holds no status document the agent wrote (torn by a power loss during an
    in-place rewrite on a full disk, damaged on flash, written by something else)."""


_SECTIONS = ("agent", "buses", "store", "sink")  # objects every status document has
READ_TRIES, READ_RETRY_S = 10, 0.02  # an in-place rewrite takes one write() call: 0.2 s is far beyond it


def read_status(state_dir: Path) -> dict[str, Any]:
    """The last status document; FileNotFoundError when the agent never ran here, StatusFileDamaged
    (saying why) when the file is not a status document."""
    path = state_dir / STATUS_FILE
    for attempt in range(READ_TRIES):
        try:
            doc = orjson.loads(path.read_bytes())
            break
        except orjson.JSONDecodeError as exc:  # an in-place rewrite on a full disk may be under way
            if attempt == READ_TRIES - 1:
                raise StatusFileDamaged(f"{path} is not JSON ({exc})") from None
            time.sleep(READ_RETRY_S)
    if not isinstance(doc, dict):
        raise StatusFileDamaged(f"{path} holds a JSON {type(doc).__name__}, not a status document")
    updated = doc.get("updated")
    if not isinstance(updated, int | float) or isinstance(updated, bool) or not math.isfinite(updated):
        raise StatusFileDamaged(f"{path}: 'updated' is {str(updated)[:40]!r}, not a time")
    for section in _SECTIONS:
        if not isinstance(doc.get(section), dict):
            raise StatusFileDamaged(f"{path}: '{section}' is missing or not an object")
    return doc


def status_age(doc: dict[str, Any], now: float | None = None) -> float:
    return (time.time() if now is None else now) - float(doc.get("updated", 0))


def not_alive_reason(doc: dict[str, Any], max_age: float = 5.0) -> str | None:
    """Why the agent of a status document is not running (None: it runs): the status file is stale,
    or (on this host) its process is gone."""
    age = status_age(doc)
    a = doc.get("agent") or {}
    if age >= max_age:
        return (f"the status is {age:.0f} s old (more than {max_age:.0f} s): pid {a.get('pid')} stopped, "
                "or its event loop is stuck")
    if age <= -max_age:  # the clock stepped back, or the time is damaged: fresh only once rewritten
        return f"the status is dated {-age:.3g} s in the future: written before the clock was set back, or damaged"
    pid = a.get("pid") if isinstance(a, dict) else None
    if type(pid) is int and 0 < pid < 2**31 and a.get("host") == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"pid {pid}, which wrote the status, is not running"
        except PermissionError:
            return None
    return None


class RateMeter:
    """Per-second rate of a monotonically increasing counter, between two reads."""

    __slots__ = ("last_value", "last_t", "rate")

    def __init__(self) -> None:
        self.last_value = 0
        self.last_t = time.monotonic()
        self.rate = 0.0

    def update(self, value: int) -> float:
        now = time.monotonic()
        dt = now - self.last_t
        if dt < 0.5:  # several readers (status file, twin, methods) within one interval share a rate
            return self.rate
        self.rate = (value - self.last_value) / dt
        self.last_value, self.last_t = value, now
        return self.rate
