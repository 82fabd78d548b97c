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
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog

from agent.twin import guard

log = structlog.get_logger()

State = Literal["idle", "downloading", "verifying", "waiting_guard", "installing", "installed_pending_reboot",
                "rebooting", "succeeded", "failed", "rolled_back"]
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "rolled_back"})
BEFORE_INSTALL: frozenset[str] = frozenset({"downloading", "verifying", "waiting_guard"})
STATE_FILE = "state.json"
MAX_DONE = 64   # ids remembered as finished (the cloud uses a new id for a new deployment)
MAX_STATE_BYTES = 1024 * 1024
MAX_ID_CHARS = 1024
TEXT_FIELDS = frozenset({"id", "version", "backend", "sha256", "error", "waiting_for", "installed_version",
                         "booted_slot", "target_slot", "boot_id"})
COUNT_FIELDS = frozenset({"progress_percent", "bytes", "size"})


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
        self.damaged = 0        # state files found damaged (and moved aside) at start
        self.unknown = False    # a damaged file named no update: whether one installed is unknown

    def load(self) -> UpdateState:
        """The saved state. A damaged file (not JSON, not UTF-8, a field of the wrong type, a directory)
        is logged, counted (`damaged`), moved aside and the updater starts idle. What it still tells is
        kept where it only ever prevents an install: its finished ids stay in `done`, and an update it
        names as installing (or after) ends `failed`, result unknown. When it names no update and was
        not plainly idle or before installing, `unknown` is set: the updater then installs nothing
        until the cloud sends an id it did not desire before (see Updater.step)."""
        try:
            raw = guard.parse(self.path.read_bytes(), guard.Limits(MAX_STATE_BYTES))
        except FileNotFoundError:
            self.state = UpdateState()
            return self.state
        except (OSError, ValueError) as exc:
            return self._damaged(str(exc) or type(exc).__name__, None)
        try:
            self.state = _checked(raw)
        except ValueError as exc:
            return self._damaged(str(exc), raw)
        return self.state

    def _damaged(self, why: str, raw: Any) -> UpdateState:
        """Count, log and set aside a damaged file; start idle with what it tells that prevents an install."""
        self.damaged += 1
        aside = self._set_aside()
        parts = raw if isinstance(raw, dict) else {}
        update_id, was = parts.get("id"), parts.get("state")
        was = was if isinstance(was, str) else None   # a list or object here is no state (nor hashable)
        self.state = UpdateState(done=_finished(parts.get("done")))
        if isinstance(update_id, str) and 0 < len(update_id) <= MAX_ID_CHARS and update_id not in self.state.done:
            if was in FINAL:
                self.state.done[update_id] = was
            elif was != "idle" and was not in BEFORE_INSTALL:   # it may have installed: never again
                self.state.id = update_id
                self.to("failed", error=f"state file damaged ({why}); whether the install ran is unknown")
        elif was != "idle" and was not in BEFORE_INSTALL:
            self.unknown = True
        if self.state.state == "idle":
            self.save()   # what was salvaged (finished ids) is kept on disk
        log.error("ota_state_unreadable", file=str(self.path), error=why, moved_to=aside,
                  action="starting idle" + ("; the next desired update is not installed" if self.unknown else ""))
        return self.state

    def _set_aside(self) -> str | None:
        """Move the damaged file (or directory) out of the way, as `state.damaged` or a unique name."""
        for name in (f"{self.path.stem}.damaged", f"{self.path.stem}.{time.time_ns()}.damaged"):
            with contextlib.suppress(OSError):
                os.replace(self.path, self.path.with_name(name))
                return name
        return None

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


def _checked(raw: Any) -> UpdateState:
    """The saved state if every field has its type; else ValueError naming the first field that does not."""
    if not isinstance(raw, dict):
        raise ValueError("not an object")
    names = {f.name for f in fields(UpdateState)}
    for key, value in raw.items():
        if key not in names:
            raise ValueError(f"unknown field {guard.short(key)}")
        if not _field_ok(key, value):
            raise ValueError(f"field {key!r}: {type(value).__name__} {guard.short(value)} is not valid here")
    return UpdateState(**raw)


def _field_ok(key: str, value: Any) -> bool:
    if key in TEXT_FIELDS:
        return value is None or isinstance(value, str)
    if key in COUNT_FIELDS:
        top = 100 if key == "progress_percent" else 2**63 - 1
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top
    if key == "state":
        return value in State.__args__  # type: ignore[attr-defined]
    if key == "changed":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if key == "installer":
        return isinstance(value, dict) and all(v is None or isinstance(v, (str, int, float)) for v in value.values())
    if key == "done":
        return isinstance(value, dict) and _finished(value) == value
    return False


def _finished(raw: Any) -> dict[str, str]:
    """The well-formed entries of a saved `done` (id -> final state), in their order."""
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(v, str) and v in FINAL and 0 < len(k) <= MAX_ID_CHARS}
