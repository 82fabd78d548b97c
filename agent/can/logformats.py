"""CAN log files: reading candump -L (with line numbers for every problem) and python-can's ASC/BLF; writing candump.

The candump reader is our own because a log with one bad line must still decode, and the user
must learn which line was bad; python-can's reader stops at the first error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import can

from agent.can.frame_format import CAN_ERR_FLAG, CANFD_BRS

_FD_LENGTHS = {0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64}
_LINE_RE = re.compile(r"^\s*\((\d+(?:\.\d+)?)\)\s+(\S+)\s+([0-9A-Fa-f]{1,8})(##?)(\S*)\s*$")


@dataclass(frozen=True, slots=True)
class LogFrame:
    """One frame read from a log, with where it came from."""

    t: float
    channel: str
    id: int
    data: bytes
    is_fd: bool = False
    is_extended: bool = False
    is_error: bool = False
    is_remote: bool = False
    line: int = 0


@dataclass(frozen=True, slots=True)
class LogProblem:
    """A line that could not be read; the reader goes on."""

    line: int
    reason: str
    text: str = ""


def timestamp_problem(t: float, text: str = "") -> str | None:
    """Why a log's timestamp cannot be a frame's time (None: it can). Every reader (decode, replay,
    run) refuses such a line the same way, with its line number: a time of hundreds of digits
    overflows a double to infinity, which no JSON reader, pacing or batch could carry. A finite
    time no clock gives (1e20 s, 1970) is still a frame here: the collector refuses and counts it."""
    if math.isfinite(t):
        return None
    if text:
        return f"timestamp of {len(text.split('.')[0])} digits overflows a double: not a time"
    return f"timestamp is not a finite number ({t}): not a time"


def frame_problem(can_id: int, extended: bool, length: int, is_fd: bool) -> str | None:
    """Why a frame read from a log is none a CAN bus carries (None: it is one). python-can's ASC/BLF
    readers hand over what the file says: negative ids, ids above 29 bits, 100-byte payloads."""
    if not 0 <= can_id <= (0x1FFFFFFF if extended else 0x7FF):
        return (f"{'extended' if extended else 'standard'} id {can_id:#x} is outside 0..0x"
                f"{'1FFFFFFF' if extended else '7FF'}")
    if (is_fd and length not in _FD_LENGTHS) or (not is_fd and length > 8):
        return f"invalid {'CAN FD' if is_fd else 'CAN'} payload length {length}"
    return None


def parse_candump_line(text: str, line: int = 0) -> LogFrame | LogProblem | None:
    """One `candump -L` line; None for blank lines and comments."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    m = _LINE_RE.match(stripped)
    if not m:
        return LogProblem(line, "not a candump -L line: expected '(time) channel id#data'", stripped[:80])
    ts, channel, ident, sep, payload = m.groups()
    t = float(ts)
    if why := timestamp_problem(t, ts):
        return LogProblem(line, why, stripped[:80])
    can_id = int(ident, 16)
    extended = len(ident) == 8
    is_error = bool(can_id & CAN_ERR_FLAG) if extended else False
    can_id &= 0x1FFFFFFF
    if not extended and can_id > 0x7FF:
        return LogProblem(line, f"standard id {ident} is above 0x7FF (extended ids have 8 hex digits)", stripped[:80])
    is_fd = sep == "##"
    if is_fd:
        if not payload:
            return LogProblem(line, "CAN FD frame without its flags nibble", stripped[:80])
        payload = payload[1:]
    remote = not is_fd and payload[:1] in ("R", "r")
    if remote:
        payload = ""
    payload = payload.replace(".", "")
    if len(payload) % 2:
        return LogProblem(line, "odd number of hex digits in the payload", stripped[:80])
    try:
        data = bytes.fromhex(payload)
    except ValueError:
        return LogProblem(line, "payload is not hexadecimal", stripped[:80])
    if why := frame_problem(can_id, extended, len(data), is_fd):
        return LogProblem(line, why, stripped[:80])
    return LogFrame(t, channel, can_id, data, is_fd, extended, is_error, remote, line)


def read_candump(lines: Iterable[str]) -> Iterator[LogFrame | LogProblem]:
    for number, text in enumerate(lines, 1):
        item = parse_candump_line(text, number)
        if item is not None:
            yield item


def read_python_can(path: Path) -> Iterator[LogFrame | LogProblem]:
    """ASC, BLF (and other python-can formats) by extension; a reader error ends the file as a problem."""
    count = 0
    try:
        for msg in can.LogReader(str(path)):
            count += 1
            why = timestamp_problem(msg.timestamp) or frame_problem(msg.arbitration_id, msg.is_extended_id,
                                                                    len(msg.data), msg.is_fd)
            if why:  # python-can gives no line numbers: the frame's
                yield LogProblem(count, f"frame {count}: {why}")
                continue
            yield LogFrame(msg.timestamp, str(msg.channel) if msg.channel is not None else "can0",
                           msg.arbitration_id, bytes(msg.data), msg.is_fd, msg.is_extended_id,
                           msg.is_error_frame, msg.is_remote_frame, count)
    except Exception as exc:  # python-can raises many types for corrupt files
        yield LogProblem(count + 1, f"cannot read {path.suffix} log after {count} frames: {exc}")


def read_log(source: str | Path | IO[str]) -> Iterator[LogFrame | LogProblem]:
    """Frames and problems from a log path (format by extension) or an open text stream (candump)."""
    if not isinstance(source, str | Path):
        return read_candump(source)
    path = Path(source)
    if path.suffix.lower() in (".asc", ".blf", ".trc", ".mf4", ".csv"):
        return read_python_can(path)
    return _read_candump_file(path)


def _read_candump_file(path: Path) -> Iterator[LogFrame | LogProblem]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from read_candump(fh)


def format_candump(t: float, channel: str, can_id: int, data: bytes, *, is_fd: bool = False,
                   is_extended: bool = False) -> str:
    """One `candump -L` line (the inverse of parse_candump_line)."""
    ident = f"{can_id:08X}" if is_extended else f"{can_id:03X}"
    sep = f"##{CANFD_BRS:X}" if is_fd else "#"
    return f"({t:.6f}) {channel} {ident}{sep}{data.hex().upper()}"
