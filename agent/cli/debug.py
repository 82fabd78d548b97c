"""`vehicle-agent debug codegen`: the Python the collector generates for a message's frames."""

from __future__ import annotations

import argparse
import sys

from agent.cli.common import EXIT_OK, EXIT_USAGE, config_or_exit, out
from agent.decode import DatabaseError
from agent.logs import configure_logging

HELP = "look inside the agent"


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_subparsers(dest="what", required=True)
    cg = what.add_parser("codegen", help="print the Python generated for a message's frames (decode, filters, appends)")
    cg.add_argument("--config", help="config file (default config/agent.yaml)")
    cg.add_argument("--message", required=True, help="message name, as in the database")
    cg.add_argument("--bus", help="only this bus")
    cg.set_defaults(func=codegen)


def run(args: argparse.Namespace) -> int:
    """Never reached: every `debug` command sets its own function."""
    return EXIT_USAGE


def codegen(args: argparse.Namespace) -> int:
    """Print the Python the collector generates for a message under the config's collection policy."""
    from agent.pipeline import build

    cfg, _ = config_or_exit(args.config)
    configure_logging("error")
    try:
        pipeline = build(cfg, on_batch=lambda _b: None)
    except DatabaseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    found = [(name, source) for bus, collector in pipeline.collectors.items() if args.bus in (None, bus)
             for name, source in collector.generated(args.message)]
    if not found:
        sys.stderr.write(f"error: no bus of {args.config or 'the config'} wants a signal of message {args.message!r}\n")
        return EXIT_USAGE
    out("\n".join(f"# {name}\n{source}" for name, source in found))
    return EXIT_OK
