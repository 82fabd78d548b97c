"""The update's state, persisted so that a power loss anywhere is resumed, reported or confirmed.

    idle ─► downloading ─► verifying ─► waiting_guard ─► installing ─► installed_pending_reboot
                                                                        │ (reboot: now / when_guard)
                                                                        ▼
                                              succeeded ◄── rebooting ──► rolled_back
    any state before installing ─► failed (download, verification, cancel); installing ─► failed

Every transition is written (atomically, fsynced) before the agent acts on it, and logged as an
`ota_state` event. Progress (bytes, percent) is written at most every `report_interval_s`. Ids that
reached an end (succeeded, failed, rolled_back) are remembered, so the same id is never installed twice.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog

log = structlog.get_logger()

State = Literal["idle", "downloading", "verifying", "waiting_guard", "installing", "installed_pending_reboot",
                "rebooting", "succeeded", "failed", "rolled_back"]
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "rolled_back"})
BEFORE_INSTALL: frozenset[str] = frozenset({"downloading", "verifying", "waiting_guard"})
STATE_FILE = "state.json"
MAX_DONE = 64   # ids remembered as finished (the cloud uses a new id for a new deployment)


@dataclass
class UpdateState:
    """One update's progress; what `software_update_state` reports (see `report`)."""

    id: str | None = None
    version: str | None = None
    backend: str | None = None
    state: State = "idle"
    progress_percent: int = 0
    bytes: int = 0
    size: int = 0
    sha256: str | None = None
    error: str | None = None
    waiting_for: str | None = None
    installed_version: str | None = None
    booted_slot: str | None = None
    target_slot: str | None = None      # RAUC: the slot the bundle went to
    boot_id: str | None = None          # the boot the reboot was asked from
    installer: dict[str, Any] = field(default_factory=dict)   # command: pid, result file; swupdate: streamed
    changed: float = 0.0                # wall time of the last transition
    done: dict[str, str] = field(default_factory=dict)        # id -> final state, newest last

    def report(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "backend": self.backend, "state": self.state,
                "progress_percent": self.progress_percent, "bytes": self.bytes, "size": self.size,
                "error": self.error, "waiting_for": self.waiting_for, "installed_version": self.installed_version,
                "booted_slot": self.booted_slot, "changed": self.changed}


class StateFile:
    """`UpdateState` on disk: read at start, written at every transition (and for progress, throttled)."""

    def __init__(self, folder: Path, report_interval_s: float) -> None:
        self.path = folder / STATE_FILE
        self.interval = report_interval_s
        self.state = UpdateState()
        self._written = 0.0
        self.write_errors = 0

    def load(self) -> UpdateState:
        """The saved state; a damaged file is logged and set aside (the cloud sees the update start over,
        its id kept out of `done`: a half-written state never blocks an update for good)."""
        try:
            raw = orjson.loads(self.path.read_bytes())
            names = {f.name for f in fields(UpdateState)}
            if not isinstance(raw, dict) or not set(raw) <= names or raw.get("state") not in State.__args__:  # type: ignore[attr-defined]
                raise ValueError("not an update state")
            self.state = UpdateState(**raw)
            if not isinstance(self.state.done, dict) or not isinstance(self.state.installer, dict):
                raise ValueError("not an update state")
        except FileNotFoundError:
            self.state = UpdateState()
        except (OSError, ValueError, TypeError) as exc:
            log.error("ota_state_unreadable", file=str(self.path), error=str(exc), action="moved aside; starting idle")
            with contextlib.suppress(OSError):
                os.replace(self.path, self.path.with_suffix(".damaged"))
            self.state = UpdateState()
        return self.state

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{STATE_FILE}.tmp")
        try:
            with tmp.open("wb") as f:
                f.write(orjson.dumps(asdict(self.state)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.write_errors += 1
            log.error("ota_state_not_saved", file=str(self.path), error=str(exc))
        self._written = time.monotonic()

    def to(self, new: State, **changes: Any) -> None:
        """A transition: applied, saved, logged (`ota_state` with from and to)."""
        st = self.state
        old = st.state
        for key, value in changes.items():
            setattr(st, key, value)
        st.state, st.changed = new, time.time()
        if new != "waiting_guard" and "waiting_for" not in changes:
            st.waiting_for = None
        if new in FINAL and st.id is not None:
            st.done.pop(st.id, None)
            st.done[st.id] = new
            while len(st.done) > MAX_DONE:
                st.done.pop(next(iter(st.done)))
        self.save()
        (log.warning if new in ("failed", "rolled_back") else log.info)(
            "ota_state", update_id=st.id, version=st.version, **{"from": old, "to": new}, error=st.error,
            waiting_for=st.waiting_for)

    def progress(self, done: int, total: int) -> None:
        """Bytes or percent moved on; saved at most every `report_interval_s`."""
        st = self.state
        st.bytes = done
        st.progress_percent = max(0, min(100, int(done * 100 // total))) if total > 0 else 0
        if time.monotonic() - self._written >= self.interval:
            self.save()

    def note(self, **changes: Any) -> None:
        """A change within a state (what it waits for, the installer's pid): saved now if it differs."""
        st = self.state
        if all(getattr(st, k) == v for k, v in changes.items()):
            return
        for key, value in changes.items():
            setattr(st, key, value)
        self.save()
        if "waiting_for" in changes:
            log.info("ota_waiting", update_id=st.id, waiting_for=st.waiting_for)
