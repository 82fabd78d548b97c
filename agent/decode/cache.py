"""Parsed databases kept on disk between starts of `vehicle-agent run` (issue 19).

cantools parses a production car's three DBC files (1,000 messages) in about a second of CPU here,
several on a head unit, and an agent starts far more often than its databases change. The parse of
each file is kept in the state directory (`<state_dir>/cache/`), named by a digest of the file's
bytes, the strictness and the versions of the agent, cantools and Python, so a changed file, an
upgrade or another mode is parsed again; reading it back takes about a twentieth of the parse.

The files are pickles, which run code when read; so a file is read only when this process's user
owns it and the folder, and neither is writable by anyone else: whoever could plant one could
already act as the agent (same user). Anything wrong with a cached file (damaged, foreign, another
version) only means a parse, never an error. Each file starts with a BLAKE2b digest of the pickle
after it: a flipped bit that still unpickles (a scale factor changed in place) would decode wrong
values silently, and a file cut short by a power loss before the page cache reached the flash is
caught the same way.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import platform
import stat
import tempfile
from pathlib import Path

import cantools
import structlog
from cantools.database import Database

from agent import __version__

log = structlog.get_logger()

_DIGEST_BYTES = 32
_VERSIONS = (f"agent {__version__} cantools {cantools.__version__} python {platform.python_version()} pickle 5"
             " prune 2")  # prune 2: labels as strings (database._prune); kept parses before that are parsed again


class ParseCache:
    """Parses by (content digest, strictness) in one folder; see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.hits = self.misses = 0

    def _path(self, digest: str, strict: bool) -> Path:
        key = hashlib.blake2b(f"{digest} strict={strict} {_VERSIONS}".encode(), digest_size=16).hexdigest()
        return self.directory / f"{key}.pickle"

    def get(self, digest: str, strict: bool) -> tuple[Database, list[str]] | None:
        """The kept parse (database, strict complaints), or None (absent, untrusted or unreadable)."""
        path = self._path(digest, strict)
        try:
            with open(path, "rb") as fh:
                if not (_private(os.fstat(fh.fileno())) and _private(os.stat(self.directory))):
                    log.warning("parse_cache_ignored", file=str(path), reason="not owned by this user or writable by others")
                    return None
                check, body = fh.read(_DIGEST_BYTES), fh.read()
                if hashlib.blake2b(body, digest_size=_DIGEST_BYTES).digest() != check:
                    raise ValueError("digest mismatch: the file is damaged")
                kept = pickle.loads(body)  # noqa: S301 - our own file, checked above
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: parse instead
            log.info("parse_cache_unreadable", file=str(path), error=repr(exc), action="parsing the database")
            self.misses += 1
            return None
        if not (isinstance(kept, tuple) and len(kept) == 3 and kept[0] == _VERSIONS and isinstance(kept[1], Database)):
            self.misses += 1
            return None
        self.hits += 1
        return kept[1], list(kept[2])

    def put(self, digest: str, strict: bool, db: Database, complaints: list[str]) -> None:
        """Keep a parse (atomically: a reader sees the whole file or none); failures are logged, not raised."""
        path = self._path(digest, strict)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".parse-")
            try:
                body = pickle.dumps((_VERSIONS, db, complaints), protocol=5)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(hashlib.blake2b(body, digest_size=_DIGEST_BYTES).digest())
                    fh.write(body)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except Exception as exc:  # noqa: BLE001 - a full disk or an unpicklable database: parse next time too
            log.warning("parse_cache_not_written", folder=str(self.directory), error=repr(exc))


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
