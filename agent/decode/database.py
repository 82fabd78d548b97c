"""Loading CAN databases with errors a user can act on (which file, which line, why)."""

from __future__ import annotations

import codecs
import hashlib
import math
import re
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

import cantools
import structlog
from cantools.database import Database, Message
from cantools.database.diagnostics import Database as DiagnosticsDatabase

from agent.can.frame_format import CAN_EFF_MASK, CAN_SFF_MASK
from agent.decode.cache import ParseCache

log = structlog.get_logger()

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
    for number, text in enumerate(_dbc_text(path).splitlines(), 1):
        if text.startswith("BO_ ") and re.search(rf"\b{re.escape(m.group(1))}\s*:", text):
            return number
    return 0


NO_STRICT_HINT = ("it loads without cantools' strict checks: set `strict: false` on the bus "
                  "(`--no-strict` for vehicle-agent decode and simulate) to use it anyway")


def load_database(path: Path, strict: bool = True) -> Database:
    """One database file; syntax and consistency errors become DatabaseError with a line number.

    `strict=False` is cantools' own leniency (overlapping signals, signals that do not fit their
    message), which OEM files often need and users cannot fix; what a strict load would have
    refused is kept for `database_warnings` and logged once per parse. A strict failure that a
    lenient load would accept says so.
    """
    if not path.is_file():
        raise DatabaseError(path, "file not found")
    repairs: list[str] = []
    if strict and path.suffix.lower() == ".dbc" and (huge := _huge_numbers(_dbc_text(path))):
        raise DatabaseError(path, _with_hint(path, huge[0][1], strict), huge[0][0])
    try:
        db = _load_lenient(path, repairs) if not strict else \
            cantools.database.load_file(str(path), database_format=None, encoding=_encoding(path), strict=True)
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
        line = int(m.group(1)) if m else _line_of_message(path, reason)
        attribute = (_attribute_problems(path) or _unreadable_attributes(path)) if not m and suffix == "dbc" else []
        if attribute:  # cantools' own words are a bare KeyError or decimal.ConversionSyntax
            line, reason = attribute[0]
        raise DatabaseError(path, _with_hint(path, reason.strip('"'), strict), line) from None
    except Exception as exc:  # cantools raises plain Errors for semantic problems (overlaps, ranges)
        reason = str(exc) or type(exc).__name__
        raise DatabaseError(path, _with_hint(path, reason, strict), _line_of_message(path, reason)) from None
    if not isinstance(db, Database):  # cantools reads a CDD file as a diagnostics database
        raise DatabaseError(path, "a diagnostics database (CDD) has no CAN messages to decode; "
                                  "give a DBC, KCD, SYM or ARXML file")
    for msg in db.messages:  # cantools checks the upper bounds only: a KCD may say id="-5"
        if not 0 <= msg.frame_id <= (CAN_EFF_MASK if msg.is_extended_frame else CAN_SFF_MASK):
            raise DatabaseError(path, f"frame id {msg.frame_id} of message {msg.name} is not a CAN id",
                                _line_of_message(path, f"message {msg.name}"))
    if not strict:
        _not_strict(path, repairs + _strict_complaints(db))
    return db


MIN_CYCLE_MS = 1.0  # no CAN bus carries one message more often (a classic frame at 1 Mbit/s takes ~0.1 ms)


def cycle_time_ms(msg: Message) -> float | None:
    """A message's cycle time (GenMsgCycleTime, ms) when a bus can keep it, for whatever paces or sizes by it
    (the simulator, campaign rings): None for an event-driven message (0 or none) and for what sloppy files
    hold instead (a negative number, NaN, infinity, an integer beyond a float); MIN_CYCLE_MS for less."""
    try:
        ms = float(msg.cycle_time or 0)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(ms, MIN_CYCLE_MS) if 0 < ms < math.inf else None


def _not_strict(path: Path, complaints: list[str]) -> None:
    """Keep (for `database_warnings`) and log what cantools' strict checks say about a lenient load."""
    _WARNINGS[str(path.absolute())] = complaints
    for complaint in complaints:
        log.warning("database_not_strict", file=str(path), complaint=complaint,
                    action="loaded anyway (strict: false); values are cantools' for this layout")


_ATTRIBUTE_DEF_RE = re.compile(r'^[ \t]*BA_DEF_(REL_)?[ \t]+(?:[A-Z_]+[ \t]+)?"([^"]*)"[ \t]+(\w+)', re.MULTILINE)
_ATTRIBUTE_RE = re.compile(r'^[ \t]*(BA_|BA_REL_|BA_DEF_DEF_|BA_DEF_DEF_REL_)[ \t]+"([^"]*)".*?'
                           r'(?:"([^"]*)"|([^\s;"]+))[ \t]*;', re.MULTILINE)


def _attribute_problems(source: Path | str) -> list[tuple[int, str]]:
    """(line, why) of each DBC attribute statement cantools refuses even with strict=False: a `BA_` of an
    attribute no `BA_DEF_` defines (a KeyError), a value that is not a number for a numeric attribute or
    a default that is not one for INT, HEX or FLOAT (decimal.ConversionSyntax); cantools names neither."""
    text = source if isinstance(source, str) else _dbc_text(source)
    kinds: dict[bool, dict[str, str]] = {False: {}, True: {}}  # relation attribute? -> name -> type
    for m in _ATTRIBUTE_DEF_RE.finditer(text):
        kinds[bool(m.group(1))][m.group(2)] = m.group(3)
    problems = []
    for m in _ATTRIBUTE_RE.finditer(text):
        keyword, name = m.group(1), m.group(2)
        value = m.group(3) if m.group(3) is not None else m.group(4)
        kind, default = kinds["REL_" in keyword].get(name), keyword.startswith("BA_DEF_DEF_")
        line = text.count("\n", 0, m.start()) + 1
        if kind is None:
            if not default:  # cantools ignores the default of an undefined attribute
                problems.append((line, f'{keyword} "{name}": no such attribute (no BA_DEF_ defines it)'))
        elif (kind in ("INT", "HEX", "FLOAT") or (kind == "ENUM" and not default)) and not _converts(value, kind):
            problems.append((line, f'{keyword} "{name}": {value!r} is not a number ({kind} attribute)'))
    return problems


# Attributes cantools reads into a field of a message, signal or bus, each expecting a type the file's
# BA_DEF_ may not give it: a STRING GenSigStartValue ("Expected int or float"), a FLOAT SPN, an INT
# DBName, a Baudrate "fast", an ENUM GenMsgSendType or VFrameFormat whose value is beyond its choices.
_READ_ATTRIBUTES = ("GenSigStartValue", "SPN", "GenMsgSendType", "VFrameFormat", "DBName", "Baudrate")


def _statements_of(text: str, name: str) -> list[int]:
    """The lines of the BA_DEF_, BA_DEF_DEF_ and BA_ statements (and their _REL_ forms) of one attribute."""
    pattern = re.compile(r'^[ \t]*BA_(?:DEF_)?(?:DEF_)?(?:REL_)?[ \t]+(?:[A-Z_]+[ \t]+)?"' + re.escape(name) + '"',
                         re.MULTILINE)
    return [text.count("\n", 0, m.start()) + 1 for m in pattern.finditer(text)]


# What cantools says when an attribute's value is not of the type its field takes (not a syntax error)
_UNREADABLE_RE = re.compile(r"Expected [\w ]+, got \w+|index out of range|could not convert|invalid literal")


def _drop_unreadable(text: str, exc: Exception) -> tuple[str, list[tuple[int, str]]]:
    """The text without the statements of each attribute cantools cannot read into its field, and (line,
    why) of each statement dropped. An attribute is found unreadable when dropping it changes what
    cantools says (it loads, or stops at another problem); cantools stops at the first it meets, so the
    others are tried again after each one found. Only for a complaint about a value's type: a file with
    a syntax error costs no load here."""
    reason, problems = _dbc_reason(exc), []
    remaining = [name for name in _READ_ATTRIBUTES if _statements_of(text, name)]
    found = True
    while found and _UNREADABLE_RE.search(reason):
        found = False
        for name in list(remaining):
            lines = _statements_of(text, name)
            rows = text.split("\n")
            keywords = {n: rows[n - 1].split()[0] for n in lines}
            for n in lines:
                rows[n - 1] = ""  # the line numbers of what follows stay the file's
            trial = "\n".join(rows)
            try:
                cantools.database.load_string(trial, "dbc", strict=False)
                now = None
            except Exception as again:  # noqa: BLE001 - another problem, or the same one
                now = _dbc_reason(again)
            if now == reason:
                continue
            problems += [(n, f'{keywords[n]} "{name}": cantools cannot read this attribute ({reason.strip(chr(34))})')
                         for n in lines]
            text, found = trial, True
            remaining.remove(name)
            if now is None:
                return text, sorted(problems)
            reason = now
            break
    return text, sorted(problems)


def _unreadable_attributes(path: Path) -> list[tuple[int, str]]:
    """(line, why) of the statements of attributes cantools cannot read into their fields (`_drop_unreadable`),
    once the statements `_attribute_problems` names are left out: for a strict load's error, which names none."""
    text = _dbc_text(path)
    rows = text.split("\n")
    for line, _ in _attribute_problems(text):
        rows[line - 1] = ""
    try:
        cantools.database.load_string("\n".join(rows), "dbc", strict=False)
    except Exception as exc:  # noqa: BLE001 - what cantools says is what is looked for
        return _drop_unreadable("\n".join(rows), exc)[1]
    return []


_ATTRIBUTE_LINE_RE = re.compile(r"^[ \t]*BA_\w*[ \t].*$", re.MULTILINE)
_EXPONENT_RE = re.compile(r"\d[eE][-+]?(\d+)")
_QUOTED_RE = re.compile(r'"[^"]*"')


def _huge_numbers(text: str) -> list[tuple[int, str]]:
    """(line, why) of each attribute statement with a number of 1,000 digits or more written with an
    exponent (`1e99999999`): cantools turns an INT, HEX or ENUM attribute's numbers into Python integers
    of that many digits, which takes hours; no attribute needs more than 20 digits. Checked before
    cantools reads the file."""
    problems = []
    for m in _ATTRIBUTE_LINE_RE.finditer(text):
        if any(len(e.lstrip("0")) > 3 for e in _EXPONENT_RE.findall(m.group(0))):
            name = _QUOTED_RE.search(m.group(0))
            what = f"{m.group(0).split()[0]} {name.group(0)}" if name else m.group(0).split()[0]
            problems.append((text.count("\n", 0, m.start()) + 1,
                             f"{what}: a number of 1,000 digits or more, beyond any attribute's value"))
    return problems


def _converts(value: str, kind: str) -> bool:
    """Whether cantools takes the value for an attribute of this type: int(Decimal(value)) for INT, HEX
    and ENUM, float(Decimal(value)) for FLOAT."""
    try:
        number = Decimal(value)
    except ArithmeticError:  # decimal.InvalidOperation: not a number at all
        return False
    return number.is_finite() or (kind == "FLOAT" and not number.is_snan())


def _encoding(path: Path) -> str | None:
    """How to read a file: UTF-8 when it starts with a UTF-8 byte order mark (Windows editors write one;
    cantools reads DBC and SYM files as cp1252, where the mark is a syntax error at line 1), else
    cantools' own choice (cp1252 for DBC and SYM, UTF-8 otherwise; XML parsers read a mark themselves)."""
    try:
        with open(path, "rb") as fh:
            return "utf-8-sig" if fh.read(3) == codecs.BOM_UTF8 else None
    except OSError:
        return None


def _dbc_text(path: Path) -> str:
    """A DBC file's text as cantools reads it."""
    try:
        return path.read_text(encoding=_encoding(path) or "cp1252", errors="replace")
    except OSError:
        return ""


_STANDARD_ID_RE = re.compile(r"Standard frame id 0x[0-9a-fA-F]+ is more than 11 bits")
_UNUSED_RE = re.compile(r"unused (VAL_|SIG_VALTYPE_) entries in DBC:((?:\s+\S+ \d+ \S+)+)")
_BO_RE = re.compile(r"^\s*BO_\s+(\d+)\s", re.MULTILINE)
_MESSAGE_REF_RE = re.compile(r"\b((?:BO_|SG_|VAL_|SIG_VALTYPE_|SG_MUL_VAL_|BO_TX_BU_|SIG_GROUP_)\s+)(\d+)\b")


def _dbc_reason(exc: Exception) -> str:
    """The DBC parser's own complaint inside cantools' joined any-format error."""
    return str(getattr(exc, "e_dbc", None) or exc)


def _load_lenient(path: Path, repairs: list[str]) -> Database | DiagnosticsDatabase:
    """cantools with strict=False, and for DBC files the two refusals cantools makes even then,
    repaired the way a DBC tool reads them (each repair listed in `repairs`):

    - a standard frame id above 11 bits (an extended id whose flag bit 31 the file forgot) is read as
      the extended id of that number; frames are matched by number, so its frames decode;
    - attribute statements cantools cannot read (`_attribute_problems`) are dropped (attributes give
      cycle times and frame formats; such a statement gives neither);
    - `VAL_` / `SIG_VALTYPE_` entries of signals no message has are dropped;
    - the statements of an attribute cantools reads into a field of the wrong type for it
      (`_drop_unreadable`: a STRING GenSigStartValue, an ENUM index beyond its choices) are dropped.
    """
    text = original = _dbc_text(path) if path.suffix.lower() == ".dbc" else ""
    huge = _huge_numbers(text)
    if huge:  # never handed to cantools as it is
        first: Exception = DatabaseError(path, huge[0][1], huge[0][0])
        reason = ""
        lines = text.split("\n")
        for line, why in huge:
            lines[line - 1] = ""
            repairs.append(f"line {line}: {why}; statement ignored")
        text = "\n".join(lines)
    else:
        try:
            return cantools.database.load_file(str(path), database_format=None, encoding=_encoding(path), strict=False)
        except Exception as exc:  # noqa: BLE001 - repaired below, or re-raised as it was
            first, reason = exc, _dbc_reason(exc)
            if path.suffix.lower() != ".dbc":
                raise
    attributes = _attribute_problems(text)
    readable = not any(_statements_of(text, name) for name in _READ_ATTRIBUTES)
    if not (_STANDARD_ID_RE.search(reason) or _UNUSED_RE.search(reason) or attributes or huge) and readable:
        raise first
    if attributes:
        lines = text.split("\n")
        for line, why in attributes:
            lines[line - 1] = ""  # the line numbers of what follows stay the file's
            repairs.append(f"line {line}: {why}; statement ignored")
        text = "\n".join(lines)
    wide = {int(i) for i in _BO_RE.findall(text) if 0x7FF < int(i) < 0x80000000}
    if wide:
        text = _MESSAGE_REF_RE.sub(lambda m: m.group(1) + str(int(m.group(2)) | 0x80000000)
                                   if int(m.group(2)) in wide else m.group(0), text)
        repairs += [f"standard frame id 0x{i:X} is more than 11 bits: read as extended id 0x{i:X}" for i in sorted(wide)]
    dropped = False
    for _ in range(4):  # unused VAL_ entries, then unused SIG_VALTYPE_ entries, and unreadable attributes
        try:
            return cantools.database.load_string(text, "dbc", strict=False)
        except Exception as exc:  # noqa: BLE001
            m = _UNUSED_RE.search(_dbc_reason(exc))
            if m is None and not dropped:
                dropped = True
                text, unreadable = _drop_unreadable(text, exc)
                repairs += [f"line {line}: {why}; statement ignored" for line, why in unreadable]
                if unreadable:
                    continue
            if m is None:  # what the repairs leave is the file's real problem (lines are kept: same numbers)
                raise (first if text == original else exc) from None
            for entry in m.group(2).split("\n"):
                if entry.strip():
                    keyword, frame_id, signal = entry.split()
                    text = re.sub(rf"^\s*{keyword}\s+{frame_id}\s+{re.escape(signal)}\b.*$", "", text, flags=re.MULTILINE)
                    repairs.append(f"{keyword} {frame_id} {signal}: no such signal, entry ignored")
    raise first


def _with_hint(path: Path, reason: str, strict: bool) -> str:
    """The reason, plus how to load the file anyway when only cantools' strict checks refuse it."""
    if not strict:
        return reason
    try:
        _load_lenient(path, [])
    except Exception:  # noqa: BLE001 - a file broken either way: the strict reason stands alone
        return reason
    return f"{reason} ({NO_STRICT_HINT})"


def _strict_complaints(db: Database) -> list[str]:
    """What cantools' strict checks say about each message of a leniently loaded database."""
    complaints = []
    for msg in db.messages:
        try:
            msg.refresh(strict=True)
        except Exception as exc:  # noqa: BLE001 - cantools' check raises plain Errors
            complaints.append(str(exc) or type(exc).__name__)
            msg.refresh(strict=False)  # the lenient state, whatever the failed check left behind
    return complaints


_WARNINGS: dict[str, list[str]] = {}  # absolute path -> cantools' complaints at its last lenient parse


def database_warnings(path: str | Path) -> list[str]:
    """cantools' strict complaints about a file last loaded with `strict=False` (empty if none)."""
    return list(_WARNINGS.get(str(Path(path).absolute()), ()))


_LOADED: dict[tuple[str, ...], tuple[tuple[str | None, ...], Database]] = {}  # paths, strict -> (digests, database)
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


def load_databases(paths: Iterable[str | Path], strict: bool = True) -> Database:
    """Several files merged into one database; a frame id defined twice is an error naming both files.

    Parsed databases are kept (per set of paths and strictness, the latest content only), because a
    config swap usually keeps its databases: a 1,500-message J1939 DBC takes ~0.8 s to parse here
    and several seconds on a head unit, while frames wait in the kernel's buffer. The merged
    database is only read afterwards (decoders are built from it), so sharing it is safe.
    """
    files = [Path(raw) for raw in paths]
    names = (*(str(path.absolute()) for path in files), f"strict={strict}")
    digests = tuple(_digest(path) for path in files)
    kept = _LOADED.get(names)
    if kept is not None and kept[0] == digests and None not in digests:
        _LOADED[names] = _LOADED.pop(names)  # most recently used last
        return kept[1]
    merged = _merge(files, strict, digests)  # raises DatabaseError naming the file it cannot use
    if None not in digests and tuple(_digest(path) for path in files) == digests:  # not replaced while parsing
        _LOADED.pop(names, None)
        _LOADED[names] = (digests, merged)
        while len(_LOADED) > _LOADED_MAX:
            del _LOADED[next(iter(_LOADED))]
    return merged


_PARSE_CACHE: ParseCache | None = None
PARSE_CACHE_DIR = "cache"  # under the state directory


def use_parse_cache(directory: Path | None) -> ParseCache | None:
    """Keep each file's parse in `directory` between starts (`vehicle-agent run`: `<state_dir>/cache`,
    agent/decode/cache.py); None: parse every time (the default)."""
    global _PARSE_CACHE
    _PARSE_CACHE = ParseCache(directory) if directory is not None else None
    return _PARSE_CACHE


def _load_kept(path: Path, strict: bool, digest: str | None) -> Database:
    """One file, from the parse cache when it holds this content, else parsed (and kept there)."""
    cache = _PARSE_CACHE if digest is not None else None
    kept = cache.get(digest, strict) if cache is not None and digest is not None else None
    if kept is not None:
        db, complaints = kept
        if not strict:
            _not_strict(path, complaints)
        return db
    db = load_database(path, strict)
    _prune(db)
    if cache is not None and digest is not None and _digest(path) == digest:  # not replaced while parsing
        cache.put(digest, strict, db, database_warnings(path) if not strict else [])
    return db


def _prune(db: Database) -> None:
    """Drop what the agent never reads from a parsed database.

    The DBC attribute tables (BA_DEF_ and BA_ of every message and signal) are read out at load:
    cycle times, frame formats, choices. Nothing uses them afterwards, and they are half of a
    parsed database's memory (11 of 22 MB for a 1,500-message J1939 DBC). Comments (most signals
    of an OEM file have one), receivers and senders are documentation the agent never reads either:
    another 2.5 MB of the three production databases (issue 19). Value tables keep each label as
    its string in a plain dict instead of cantools' NamedSignalValue (an object with a dict and a
    comments dict of its own) in an OrderedDict: 1.9 MB of the 11 MB of those three databases. The
    agent decodes numbers (`decode_choices=False`) and reads labels with str(), the name either way."""
    db.dbc = None
    for msg in db.messages:
        msg.dbc = None
        msg.comment = None
        if msg.senders:
            msg.senders.clear()
        for sig in msg.signals:
            sig.dbc = None  # type: ignore[assignment]  # cantools keeps None for "no DBC specifics"; its hint omits it
            sig.comment = None
            if sig.receivers:
                sig.receivers.clear()
            if sig.choices:  # a NamedSignalConversion's table (its inverse, for encoding labels, stays)
                labels = {key: str(label) for key, label in sig.choices.items()}
                sig.conversion.choices = labels  # type: ignore[assignment]  # a dict is ordered too


def _merge(files: list[Path], strict: bool, digests: tuple[str | None, ...]) -> Database:
    merged = Database(strict=strict)
    owner: dict[int, Path] = {}
    for path, digest in zip(files, digests, strict=True):
        db = _load_kept(path, strict, digest)
        for msg in db.messages:
            if msg.frame_id in owner:
                raise DatabaseError(
                    path, f"frame id 0x{msg.frame_id:X} ({msg.name}) is already defined in {owner[msg.frame_id]}",
                    _line_of_message(path, f"message {msg.name}"))
            owner[msg.frame_id] = path
            merged.messages.append(msg)
        merged.nodes.extend(db.nodes)
    # The lookup tables only: `Database.refresh` would also rebuild every message's codecs, which its
    # own file's load built with the same strictness (0.15 s of a production car's start).
    merged._name_to_message, merged._frame_id_to_message = {}, {}  # noqa: SLF001 - cantools 45's refresh, minus the messages'
    for msg in merged.messages:
        merged._add_message(msg)  # noqa: SLF001
    merged.dbc = None
    return merged
