"""Logging: structlog events with stable keys; JSON when not on a TTY (containers), readable on a TTY."""

from __future__ import annotations

import logging
import os
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str | None = None) -> None:
    """Log to stderr. fmt: 'json' | 'console' | None (console on a TTY, else json; $VEHICLE_AGENT_LOG_FORMAT wins)."""
    fmt = os.environ.get("VEHICLE_AGENT_LOG_FORMAT") or fmt or ("console" if sys.stderr.isatty() else "json")
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def set_level(level: str) -> None:
    """Change the level at run time (config swap, set_log_level method)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)))
