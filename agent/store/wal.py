"""The store's write-ahead log, kept within a byte budget.

SQLite checkpoints its WAL by itself only at 1000 pages (~4 MiB) and never gives the space back
(the file is reused, not shrunk). On a small state partition that WAL alone fills the disk: on a
2 MiB one it grew to the whole partition in about 10 s while the uplink was down, every later write
failed, and space freed by deleting a file was taken again at once, so the store never recovered.

So after every write the WAL's size is compared with a budget: `store.wal_max_bytes`, and never more
than a quarter of the space the WAL could use (free space plus the WAL itself), so a checkpoint always
has room to copy the WAL's pages into the database file. Above the budget the WAL is checkpointed and
truncated (`PRAGMA wal_checkpoint(TRUNCATE)`), and after a write failed for lack of space too, which
is what lets the store recover once space is freed.

The trade-off, deliberately: a smaller WAL means more checkpoints, and every checkpoint writes the
pages that changed since the last one into the database file and syncs it; the same hot pages (the
counters, the index roots) are written again at every checkpoint, so a small budget costs flash
wear. The default (4 MiB) is SQLite's own; only a small partition lowers it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger()

WAL_MAX_BYTES = 4 * 1024 * 1024  # SQLite's own default: 1000 pages of 4 KiB
WAL_FLOOR_BYTES = 64 * 1024      # below this the WAL is never checkpointed for its size (a few commits)
SQLITE_FULL = 13


class WalBudget:
    """Checks a store's WAL after each write and checkpoints it back within its budget."""

    def __init__(self, path: Path, max_bytes: int = WAL_MAX_BYTES) -> None:
        self.path = Path(f"{path}-wal")
        self.max_bytes = max_bytes
        self.checkpoints = 0       # truncating checkpoints run (budget exceeded, or a write found the disk full)
        self.incomplete = 0        # checkpoints that could not finish (a reader, or no space for the database)
        self.last_error: str | None = None
        self.limit = max_bytes
        self._applied: tuple[int, int] | None = None  # (connection, cap) the pragmas were set for

    def configure(self, db: sqlite3.Connection) -> None:
        """SQLite's own checkpoint at the cap, and a WAL it shrinks to the cap after one, as a backstop
        (again after a config swap changed the cap)."""
        page = db.execute("PRAGMA page_size").fetchone()[0] or 4096
        db.execute(f"PRAGMA wal_autocheckpoint={max(1, self.max_bytes // page)}")
        db.execute(f"PRAGMA journal_size_limit={self.max_bytes}")
        self._applied = (id(db), self.max_bytes)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def budget(self, wal: int) -> int:
        """The WAL's limit now: the configured cap, at most a quarter of the space it could take."""
        try:
            st = os.statvfs(self.path.parent)
            room = st.f_bavail * st.f_frsize + wal
        except OSError:
            return self.max_bytes
        return max(WAL_FLOOR_BYTES, min(self.max_bytes, room // 4))

    def after_write(self, db: sqlite3.Connection) -> None:
        """Checkpoint when the WAL is over its budget (a stat; statvfs only above the floor)."""
        if self._applied != (id(db), self.max_bytes):
            self.configure(db)
        wal = self.size()
        if wal <= WAL_FLOOR_BYTES:
            return
        self.limit = self.budget(wal)
        if wal > self.limit:
            self.checkpoint(db, f"WAL {wal} B over its budget of {self.limit} B")

    def checkpoint(self, db: sqlite3.Connection, why: str) -> bool:
        """Copy the WAL into the database file and truncate it; True if it finished. Never raises:
        a checkpoint that cannot finish leaves a valid WAL, and the next write tries again."""
        self.checkpoints += 1
        try:
            busy, frames, copied = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            self._incomplete(str(exc), why)
            return False
        if busy:
            self._incomplete(f"busy: {copied} of {frames} pages copied (another connection reads)", why)
            return False
        if self.last_error is not None:
            log.info("store_wal_checkpointed", path=str(self.path), why=why)
        self.last_error = None
        return True

    def _incomplete(self, error: str, why: str) -> None:
        self.incomplete += 1
        if error != self.last_error:
            log.warning("store_wal_checkpoint_incomplete", path=str(self.path), error=error, why=why,
                        action="the WAL stays valid; checkpointing again after the next write")
        self.last_error = error

    def status(self) -> dict[str, Any]:
        return {"bytes": self.size(), "limit_bytes": self.limit, "max_bytes": self.max_bytes,
                "checkpoints": self.checkpoints, "checkpoints_incomplete": self.incomplete,
                "last_error": self.last_error}
