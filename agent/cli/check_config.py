"""`vehicle-agent check-config`: validate a config, load its databases, warn about idle rules."""

from __future__ import annotations

import argparse
import sys

from agent.checks import check_databases, undecodable_messages, unmatched_rules
from agent.cli.common import EXIT_OK, EXIT_USAGE, load_config, out, print_config_error
from agent.config import ConfigError, config_path
from agent.logs import configure_logging

HELP = "validate a config; errors with their path, exit code 2"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="config file (default $VEHICLE_AGENT_CONFIG or config/agent.yaml)")


def run(args: argparse.Namespace) -> int:
    configure_logging("error")  # cantools' complaints about lenient databases are listed below instead
    path = config_path(args.file)
    try:
        cfg, _ = load_config(args.file)
        lenient = check_databases(cfg, source=str(path))
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_USAGE
    for warning in [*undecodable_messages(cfg), *unmatched_rules(cfg)]:
        sys.stderr.write(f"{path}: warning: {warning}\n")
    for line in lenient:
        out(line)
    out(f"{path}: OK ({len(cfg.buses)} buses, sink {cfg.sink.type}, encoding {cfg.encoding.format})"
        + (f", {len(lenient)} complaints of cantools' strict checks (strict: false)" if lenient else ""))
    return EXIT_OK
