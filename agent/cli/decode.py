"""`vehicle-agent decode`: a recorded log to JSON lines (agent.decode.logfile does the work)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import structlog

from agent.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, out
from agent.codec import exact_json
from agent.decode import DatabaseError, FrameDecoder, load_databases
from agent.decode.logfile import DecodeStats, decode_log
from agent.logs import configure_logging

log = structlog.get_logger()

HELP = "decode a candump -L / ASC / BLF log to JSON lines"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dbc", action="append", required=True, help="database file (repeat for several)")
    p.add_argument("--labels", action="store_true", help="write enum signals as their label")
    p.add_argument("--no-strict", action="store_true",
                   help="load databases without cantools' strict checks (overlapping signals, signals that do not fit)")
    p.add_argument("log", nargs="?", help="log file (.log candump -L, .asc, .blf); stdin if absent or -")


def run(args: argparse.Namespace) -> int:
    configure_logging("info", "console")
    try:
        decoder = FrameDecoder(load_databases(args.dbc, strict=not args.no_strict))
    except DatabaseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    source: Any = sys.stdin if args.log in (None, "-") else Path(args.log)
    if isinstance(source, Path) and not source.is_file():
        sys.stderr.write(f"error: {source}: file not found\n")
        return EXIT_USAGE
    stats = DecodeStats()
    for record in decode_log(decoder, source, stats, labels=args.labels):
        out(exact_json(record))
    sys.stdout.flush()
    log.info("decode_done", **stats.as_log())
    if stats.decoded:
        return EXIT_OK
    if stats.unknown:
        log.warning("no_frame_decoded", frames=sum(stats.unknown.values()), databases=[str(Path(d)) for d in args.dbc],
                    hint="none of the log's frame ids is in these databases: is it the right --dbc for this bus?")
    else:
        log.warning("no_frame_decoded", hint="the input holds no decodable frame (empty, or only bad lines)")
    return EXIT_FAIL
