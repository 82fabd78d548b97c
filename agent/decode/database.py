"""Loading CAN databases with errors a user can act on (which file, which line, why)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

import cantools
from cantools.database import Database

_LINE_RE = re.compile(r"line (\d+), column (\d+)")
_MESSAGE_RE = re.compile(r"message '?([A-Za-z_][A-Za-z0-9_]*)'?")


class DatabaseError(ValueError):
    """A database file that cannot be used. `path` and `line` say where (line 0 when unknown)."""

    def __init__(self, path: Path, reason: str, line: int = 0) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {reason}")


def _line_of_message(path: Path, reason: str) -> int:
    """Best-effort line of the message a semantic error names (cantools gives no line for those)."""
    m = _MESSAGE_RE.search(reason)
    if not m:
        return 0
    try:
        for number, text in enumerate(path.read_text(encoding="cp1252", errors="replace").splitlines(), 1):
            if text.startswith("BO_ ") and re.search(rf"\b{re.escape(m.group(1))}\s*:", text):
                return number
    except OSError:
        return 0
    return 0


def load_database(path: Path) -> Database:
    """One database file; syntax and consistency errors become DatabaseError with a line number."""
    if not path.is_file():
        raise DatabaseError(path, "file not found")
    try:
        return cantools.database.load_file(str(path), database_format=None)
    except cantools.database.UnsupportedDatabaseFormatError as exc:
        # cantools tries every format and joins their complaints; keep the one for this file's format.
        text = str(exc)
        suffix = path.suffix.lower().lstrip(".")
        parts = {p.split(":", 1)[0].strip().lower(): p.split(":", 1)[1].strip()
                 for p in (getattr(exc, f"e_{k}", None) and f"{k}: {getattr(exc, f'e_{k}')}"
                           for k in ("arxml", "dbc", "kcd", "sym", "cdd"))
                 if p}
        reason = parts.get(suffix) or text
        m = _LINE_RE.search(reason)
        line = int(m.group(1)) if m else 0
        raise DatabaseError(path, reason.strip('"'), line) from None
    except Exception as exc:  # cantools raises plain Errors for semantic problems (overlaps, ranges)
        reason = str(exc) or type(exc).__name__
        raise DatabaseError(path, reason, _line_of_message(path, reason)) from None


_LOADED: dict[tuple[str, ...], tuple[tuple[str, ...], Database]] = {}  # paths -> (their digests, database)
_LOADED_MAX = 16  # sets of paths (a bus's databases); each keeps only its latest content


def _digest(path: Path) -> str | None:
    """A digest of a regular file's bytes (hashing a large DBC costs about a millisecond; modification
    times are coarse on some file systems); None for anything else, which load_database reports."""
    try:
        if not path.is_file():
            return None
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return None


def load_databases(paths: Iterable[str | Path]) -> Database:
    """Several files merged into one database; a frame id defined twice is an error naming both files.

    Parsed databases are kept (per set of paths, the latest content only), because a config swap
    usually keeps its databases: a 1,500-message J1939 DBC takes ~0.8 s to parse here and several
    seconds on a head unit, while frames wait in the kernel's buffer. The merged database is only
    read afterwards (decoders are built from it), so sharing it is safe.
    """
    files = [Path(raw) for raw in paths]
    names = tuple(str(path.absolute()) for path in files)
    digests = tuple(_digest(path) for path in files)
    kept = _LOADED.get(names)
    if kept is not None and kept[0] == digests and None not in digests:
        _LOADED[names] = _LOADED.pop(names)  # most recently used last
        return kept[1]
    merged = _merge(files)  # raises DatabaseError naming the file it cannot use
    if None not in digests and tuple(_digest(path) for path in files) == digests:  # not replaced while parsing
        _LOADED.pop(names, None)
        _LOADED[names] = (digests, merged)
        while len(_LOADED) > _LOADED_MAX:
            del _LOADED[next(iter(_LOADED))]
    return merged


def _merge(files: list[Path]) -> Database:
    merged = Database()
    owner: dict[int, Path] = {}
    for path in files:
        db = load_database(path)
        for msg in db.messages:
            if msg.frame_id in owner:
                raise DatabaseError(
                    path, f"frame id 0x{msg.frame_id:X} ({msg.name}) is already defined in {owner[msg.frame_id]}",
                    _line_of_message(path, f"message {msg.name}"))
            owner[msg.frame_id] = path
            merged.messages.append(msg)
        merged.nodes.extend(db.nodes)
    merged.refresh()
    # The DBC attribute tables (BA_DEF_ and BA_ of every message and signal) are read out at load:
    # cycle times, frame formats, choices. Nothing uses them afterwards, and they are half of a
    # parsed database's memory (11 of 22 MB for a 1,500-message J1939 DBC).
    merged.dbc = None
    for msg in merged.messages:
        msg.dbc = None
        for sig in msg.signals:
            sig.dbc = None
    return merged
