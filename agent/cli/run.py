"""`vehicle-agent run`: start-up checks, then the agent until SIGTERM/Ctrl-C; SIGHUP reloads the file."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog

from agent.cli.common import EXIT_OK, EXIT_USAGE, config_or_exit
from agent.config import config_path
from agent.decode import DatabaseError
from agent.logs import configure_logging

log = structlog.get_logger()

HELP = "run the agent (default config: $VEHICLE_AGENT_CONFIG or config/agent.yaml)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file")
    p.add_argument("--no-progress", action="store_true", help="no live progress line on a TTY")


def run(args: argparse.Namespace) -> int:
    cfg, data = config_or_exit(args.config)
    configure_logging(cfg.log_level)
    from agent.app import Agent
    from agent.campaigns.engine import CampaignError
    from agent.decode.database import PARSE_CACHE_DIR, use_parse_cache
    from agent.pipeline import preload
    from agent.reload import reload_from_file
    from agent.startup import StartupError, agent_writes, check_secrets, prepare_state_dir

    try:
        check_secrets(cfg)
        lock = prepare_state_dir(cfg.resolve(cfg.state_dir), agent_writes(cfg))
    except StartupError as exc:
        log.error(exc.event, **exc.fields)
        return EXIT_USAGE

    use_parse_cache(cfg.resolve(cfg.state_dir) / PARSE_CACHE_DIR)  # parses kept between starts

    async def main() -> None:
        try:
            preload(cfg)
            agent = Agent(cfg, base=data, progress=sys.stderr.isatty() and not args.no_progress)
        except DatabaseError as exc:
            log.error("database_invalid", file=str(exc.path), line=exc.line, reason=exc.reason)
            raise SystemExit(EXIT_USAGE) from None
        except CampaignError as exc:  # signals the databases do not have (`check-config` lists them too)
            log.error("campaigns_invalid", errors=exc.errors)
            raise SystemExit(EXIT_USAGE) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload_from_file, agent, config_path(args.config))
        await agent.run()

    try:
        asyncio.run(main())
    finally:
        lock.release()
    return EXIT_OK
