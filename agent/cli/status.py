"""`vehicle-agent status`: the agent's status from its state directory (agent.status.view reads it,
agent.status.text renders it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from agent.cli.common import EXIT_FAIL, EXIT_OK, config_or_exit, out

HELP = "show the running agent's status from its state directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file (to find the state directory)")
    p.add_argument("--state-dir", help="state directory (instead of --config)")
    p.add_argument("--json", action="store_true", help="print the whole status document")
    p.add_argument("--check", action="store_true",
                   help="exit 0 if the agent runs and its status is fresh, else 1 with the reason (health check)")
    p.add_argument("--max-age", type=float, default=30.0, help="--check: seconds a status may be old")


def run(args: argparse.Namespace) -> int:
    from agent.health import StatusFileDamaged, not_alive_reason, read_status
    from agent.status.text import render
    from agent.status.view import gather

    store_path: Path | None = None
    if args.state_dir:
        state_dir = Path(args.state_dir)
    else:
        cfg, _ = config_or_exit(args.config)
        state_dir, store_path = cfg.resolve(cfg.state_dir), cfg.state_path(cfg.store.path)
    if args.check:
        try:
            why = not_alive_reason(read_status(state_dir), args.max_age)
        except FileNotFoundError:
            why = f"no status file in {state_dir}: the agent has not run with this state directory"
        except StatusFileDamaged as exc:
            why = f"status file damaged: {exc}"
        if why:
            sys.stderr.write(f"unhealthy: {why}\n")
            return EXIT_FAIL
        return EXIT_OK
    view = gather(state_dir, store_path)
    if view is None:
        sys.stderr.write(f"no status in {state_dir} and no store at {store_path or state_dir / 'store.db'}: "
                         "the agent has not run with this state directory\n")
        return EXIT_FAIL
    if args.json:
        out(orjson.dumps(view.as_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        return EXIT_OK
    try:
        out(render(view))
    except StatusFileDamaged as exc:
        sys.stderr.write(f"error: {state_dir / 'status.json'}: {exc}\n")
        return EXIT_FAIL
    return EXIT_OK
