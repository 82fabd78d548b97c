"""Remote database versions on disk, under `<state_dir>/databases/`:

    blobs/<sha256>              every downloaded file, named by its hash (agent.download's store)
    blobs/.partial/<sha256>     a download in progress (resumed after a restart)
    versions/<key>/<name>       one folder per version: hard links to its blobs under the names buses use
    state.json                  which version is active, which is known-good, which were refused

A version folder is made whole in a temporary folder and renamed; state.json is replaced atomically,
so a power loss leaves either the old or the new state. At start the active version's files are
hashed again: a damaged one falls back to the known-good version (or the local files).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from agent.download import SHA256, ContentStore
from agent.durable import sync_dir
from agent.remotedb.document import DatabasesDocument
from agent.twin import guard

log = structlog.get_logger()

STATE_FILE = "state.json"
MAX_REFUSED = 16     # versions remembered as refused (not tried again until the cloud sends another)
CAN_ID_MAX = 0x1FFFFFFF


@dataclass(frozen=True, slots=True)
class Version:
    """A version as the agent keeps it: no URLs (they may hold secrets and are not needed once fetched)."""

    key: str
    version: str
    files: dict[str, str]   # name -> sha256
    sizes: dict[str, int]

    @classmethod
    def of(cls, doc: DatabasesDocument) -> Version:
        return cls(doc.key, doc.version, {f.name: f.sha256 for f in doc.files}, {f.name: f.size for f in doc.files})

    @classmethod
    def parse(cls, raw: Any) -> Version | None:
        """A saved version, or None when it is not one (a damaged state file is not trusted)."""
        try:
            v = cls(str(raw["key"]), str(raw["version"]), dict(raw["files"]), dict(raw["sizes"]))
        except (KeyError, TypeError, ValueError):
            return None
        ok = (all(isinstance(s, str) and SHA256.match(s) for s in v.files.values())
              and set(v.files) == set(v.sizes) and all(isinstance(n, int) for n in v.sizes.values())
              and "/" not in v.key and not v.key.startswith("."))
        return v if ok else None


@dataclass
class State:
    active: Version | None = None
    known_good: Version | None = None      # the last version that passed its watch (rollback target)
    previous: Version | None = None        # the version active before this one (GC keeps the last two)
    refused: dict[str, str] = field(default_factory=dict)   # key -> why (rolled back or refused)
    last_error: str | None = None
    activated_at: float | None = None
    # during the active version's watch: per bus, the ids the receive filter passes besides the wanted
    # ones (those the previous files knew and this version dropped); kept so a restart passes them too
    watch_ids: dict[str, list[int]] = field(default_factory=dict)


def _watch_ids(raw: Any) -> dict[str, list[int]]:
    """Saved watch ids: bus -> CAN ids; anything else in the file is dropped (the filter is then the
    policy's alone, as it was before ids were saved)."""
    if not isinstance(raw, dict):
        return {}
    return {bus: [i for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= CAN_ID_MAX]
            for bus, ids in raw.items() if isinstance(bus, str) and isinstance(ids, list)}


class Versions:
    """The folder of remote database versions and its state file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = ContentStore(root / "blobs")
        self.state = State()

    def folder(self, key: str) -> Path:
        return self.root / "versions" / key

    # ------------------------------------------------------------------ state
    def load(self) -> State:
        """The saved state; an active version whose files are no longer whole falls back to the
        known-good one, then to the local files (logged, kept as last_error)."""
        path = self.root / STATE_FILE
        try:
            raw = guard.parse(path.read_bytes(), guard.Limits(1024 * 1024))
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            self.state = State(active=Version.parse(raw.get("active")) if raw.get("active") else None,
                               known_good=Version.parse(raw.get("known_good")) if raw.get("known_good") else None,
                               previous=Version.parse(raw.get("previous")) if raw.get("previous") else None,
                               refused={str(k): str(v) for k, v in (raw.get("refused") or {}).items()},
                               last_error=raw.get("last_error") if isinstance(raw.get("last_error"), str) else None,
                               activated_at=raw.get("activated_at") if isinstance(raw.get("activated_at"), float)
                               else None,
                               watch_ids=_watch_ids(raw.get("watch_ids")))
        except FileNotFoundError:
            return self.state
        except (OSError, ValueError, AttributeError) as exc:
            log.error("remote_databases_state_unreadable", file=str(path), error=str(exc),
                      action="using the local database files")
            self.state = State(last_error=f"state file unreadable: {type(exc).__name__}")
            return self.state
        for name in ("active", "known_good", "previous"):
            version = getattr(self.state, name)
            if version is not None and not self.whole(version):
                log.error("remote_databases_damaged", version=version.version, which=name,
                          action="falling back to the known-good version or the local files")
                self.state.last_error = f"version {version.version}: files damaged on disk; not used"
                setattr(self.state, name, None)
        if self.state.active is None and self.state.known_good is not None:
            self.state.active = self.state.known_good
        return self.state

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        s = self.state
        doc = {"active": asdict(s.active) if s.active else None,
               "known_good": asdict(s.known_good) if s.known_good else None,
               "previous": asdict(s.previous) if s.previous else None, "refused": dict(list(s.refused.items())[-MAX_REFUSED:]),
               "last_error": s.last_error, "activated_at": s.activated_at, "watch_ids": s.watch_ids}
        tmp = self.root / f".{STATE_FILE}.tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / STATE_FILE)
        sync_dir(self.root)

    # ------------------------------------------------------------------ folders
    def whole(self, version: Version) -> bool:
        """Every file of the version's folder is there and hashes right."""
        folder = self.folder(version.key)
        for name, sha in version.files.items():
            path = folder / name
            if self.blobs.verified(sha, version.sizes[name]) is None or not path.is_file() \
                    or not os.path.samefile(path, self.blobs.path(sha)):
                return False
        return True

    def materialize(self, version: Version) -> Path:
        """The version's folder of names (hard links to the verified blobs), made whole then renamed."""
        final = self.folder(version.key)
        if final.is_dir() and self.whole(version):
            return final
        tmp = final.with_name(f".{version.key}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for name, sha in version.files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(self.blobs.path(sha), target)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        sync_dir(final.parent)
        return final

    def keep_recent(self, pending: Version | None = None) -> list[str]:
        """Remove version folders and blobs beyond the last two versions (active and previous; the
        known-good one too if it is older; never a refused one), keeping the blobs of `pending`.
        Returns the removed folders' keys."""
        s = self.state
        kept = [v for v in (s.active, s.previous, s.known_good) if v is not None and v.key not in s.refused]
        keys = {v.key for v in kept}
        removed = []
        versions = self.root / "versions"
        if versions.is_dir():
            for entry in versions.iterdir():
                if entry.name not in keys:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry.name)
        self.blobs.keep_only({sha for v in [*kept, *([pending] if pending else [])] for sha in v.files.values()})
        return removed

    def activated(self, version: Version | None) -> None:
        """`version` is live now (None: the local files); the one it replaces becomes `previous`."""
        if self.state.active is not None and (version is None or self.state.active.key != version.key):
            self.state.previous = self.state.active
        self.state.active = version
        self.state.activated_at = time.time()
