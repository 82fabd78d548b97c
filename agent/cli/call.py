"""`vehicle-agent call`: a direct method on the running agent through its local control socket."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from agent.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, config_or_exit, out

HELP = "call a method (flush, get_status, set_log_level) on the running agent (file sink)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method")
    p.add_argument("payload", nargs="?", help='JSON payload, e.g. \'{"level": "debug", "duration_s": 600}\'')
    p.add_argument("--config", help="config file (to find the state directory)")
    p.add_argument("--state-dir", help="state directory (instead of --config)")


def run(args: argparse.Namespace) -> int:
    from agent.twin.local import call_method

    if args.state_dir:
        state_dir = Path(args.state_dir)
    else:
        cfg, _ = config_or_exit(args.config)
        state_dir = cfg.resolve(cfg.state_dir)
    try:
        payload = orjson.loads(args.payload) if args.payload else None
    except ValueError as exc:
        sys.stderr.write(f"error: the payload is not JSON: {exc}\n")
        return EXIT_USAGE
    try:
        status, answer = call_method(state_dir, args.method, payload)
    except OSError as exc:
        sys.stderr.write(f"error: no agent answers on {state_dir}/control/agent.sock: {exc.strerror or exc}\n")
        return EXIT_FAIL
    out(orjson.dumps({"status": status, "payload": answer}, option=orjson.OPT_INDENT_2))
    return EXIT_OK if status == 200 else EXIT_FAIL
