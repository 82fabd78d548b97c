"""`vehicle-agent bench`: measure this machine (agent.bench does the work)."""

from __future__ import annotations

import argparse
import sys

import orjson

from agent.cli.common import EXIT_OK, EXIT_USAGE, config_or_exit, out, print_config_error
from agent.config import ConfigError
from agent.decode import DatabaseError
from agent.logs import configure_logging

HELP = "measure each stage on this machine: frames/s, us/frame, wire bytes, RSS"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config whose buses and collection policy to measure (default config/agent.yaml)")
    p.add_argument("--dbc", action="append", help="measure one bus with this database instead (repeat for several)")
    p.add_argument("--seconds", type=float, default=20.0, help="about how long the benchmark runs (default 20)")
    p.add_argument("--profile", choices=["car", "production"], default="car",
                   help="car: the config's buses (default); production: three production-size databases, "
                        "start-up time and an eight-bus car at saturation (docs/performance.md)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from agent.bench import config_for_databases, format_report, run_bench

    configure_logging("warning")  # the agents the benchmark starts would drown its progress
    cfg, _ = config_or_exit(args.config)
    if args.dbc:
        try:
            cfg = config_for_databases(args.dbc, cfg.collection)
        except ConfigError as exc:
            print_config_error(exc)
            return EXIT_USAGE
    def show(msg: str) -> None:
        if not args.quiet:
            sys.stderr.write(f"bench: {msg}\n")

    try:
        if args.profile == "production":
            from agent.bench.production import format_production, run_production

            if args.dbc:
                sys.stderr.write("error: --profile production brings its own databases; leave out --dbc\n")
                return EXIT_USAGE
            result = run_production(cfg, seconds=args.seconds, progress=show)
            report = format_production
        else:
            result = run_bench(cfg, seconds=args.seconds, progress=show)
            report = format_report
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_USAGE
    except DatabaseError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    out(orjson.dumps(result) if args.json else report(result))
    return EXIT_OK
