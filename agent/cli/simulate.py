"""`vehicle-agent simulate`: plausible drive traffic for every message of a database, or a recording."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog

from agent.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from agent.decode import DatabaseError, load_databases
from agent.logs import configure_logging

log = structlog.get_logger()

HELP = "send plausible drive traffic for every message of a database"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dbc", action="append", required=True, help="database file (repeat for several)")
    p.add_argument("--channel", default="vcan0")
    p.add_argument("--interface", default="auto",
                   help="socketcan | virtual | any python-can interface (auto: socketcan; a channel that does not "
                        "exist is an error)")
    p.add_argument("--rate", type=float, default=1.0, help="speed-up of simulated time (2 = twice real time)")
    p.add_argument("--duration", type=float, default=None, help="simulated seconds (default: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", metavar="LOG", help="write a candump -L log of --duration s instead of sending")
    p.add_argument("--no-strict", action="store_true",
                   help="load databases without cantools' strict checks (overlapping signals, signals that do not fit)")


def run(args: argparse.Namespace) -> int:
    configure_logging("info")
    from agent.can.simulator import record_candump_log, run_simulator

    try:
        db = load_databases(args.dbc, strict=not args.no_strict)
    except DatabaseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    if args.record:
        n = record_candump_log(db, args.record, seconds=args.duration or 10.0, channel=args.channel,
                               seed=args.seed)
        log.info("simulate_recorded", file=args.record, frames=n)
        return EXIT_OK
    import can

    from agent.can.source import simulation_target_problem

    problem = simulation_target_problem(args.interface, args.channel)
    if problem:
        sys.stderr.write(f"error: {problem}\n")
        return EXIT_USAGE
    interface = "socketcan" if args.interface == "auto" else args.interface
    try:
        bus = can.Bus(interface=interface, channel=args.channel, fd=True) if interface == "socketcan" \
            else can.Bus(interface=interface, channel=args.channel)
    except (can.CanError, OSError, ValueError) as exc:
        sys.stderr.write(f"error: cannot open {interface} channel {args.channel}: {exc}\n")
        return EXIT_FAIL

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("simulate_start", interface=interface, channel=args.channel, rate=args.rate,
                 messages=len(db.messages))
        return await run_simulator(bus, db, rate=args.rate, duration=args.duration, stop=stop, seed=args.seed)

    try:
        sent = asyncio.run(main())
    finally:
        bus.shutdown()
    log.info("simulate_done", frames=sent)
    return EXIT_OK
