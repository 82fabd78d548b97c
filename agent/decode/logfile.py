"""Decoding a recorded log (candump -L, ASC, BLF) frame by frame: what `vehicle-agent decode` prints.

Every line is accounted for: decoded, an id no database knows (counted per id), a frame shorter
than its message, a payload the database refuses, or a line that is not a frame (warned about with
its line number). The caller decides what a run that decoded nothing means.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog

from agent.can.logformats import LogProblem, read_log
from agent.decode.decoder import FrameDecoder, ShortFrameError, Value

log = structlog.get_logger()


@dataclass(slots=True)
class DecodeStats:
    """What a decode run met, for its closing log line."""

    decoded: int = 0
    unknown: Counter[int] = field(default_factory=Counter)  # frame id -> frames no database knows
    short: int = 0
    bad: int = 0

    def as_log(self) -> dict[str, Any]:
        return {"decoded": self.decoded, "unknown_frames": sum(self.unknown.values()), "unknown_ids": len(self.unknown),
                "short_frames": self.short, "bad_lines": self.bad,
                "unknown_id_list": [f"0x{i:X}" for i, _ in self.unknown.most_common(10)]}


def decode_log(decoder: FrameDecoder, source: Path | IO[str], stats: DecodeStats, *,
               labels: bool = False) -> Iterator[dict[str, Any]]:
    """One record per decoded frame, `{"t", "bus", "id", "message", "signals"}`; the rest counted in `stats`."""
    name = str(source) if isinstance(source, Path) else "<stdin>"
    for item in read_log(source):
        if isinstance(item, LogProblem):
            stats.bad += 1
            log.warning("bad_line", file=name, line=item.line, reason=item.reason, text=item.text)
            continue
        if item.is_error or item.is_remote:
            continue
        dec = decoder.get(item.id)
        if dec is None:
            stats.unknown[item.id] += 1
            continue
        try:
            values = dec.decode(item.data)
        except ShortFrameError as exc:
            stats.short += 1
            log.warning("short_frame", file=name, line=item.line, id=f"0x{item.id:X}", reason=str(exc))
            continue
        except Exception as exc:  # a payload cantools refuses (e.g. unknown multiplexer value)
            stats.bad += 1
            log.warning("undecodable_frame", file=name, line=item.line, id=f"0x{item.id:X}", reason=str(exc))
            continue
        shown: Mapping[str, Value] = {k: dec.label(k, v) for k, v in values.items()} if labels else values
        stats.decoded += 1
        yield {"t": item.t, "bus": item.channel, "id": item.id, "message": dec.name, "signals": shown}
