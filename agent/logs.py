"""Logging: structlog events with stable keys; JSON when not on a TTY (containers), readable on a TTY."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
CLEAR_LINE = "\r\x1b[2K"


class ProgressStream:
    """stderr shared by log lines and the live progress line of a TTY: a log line first clears the
    progress line, which is drawn again below it, so neither is written over the other."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.line = ""  # the progress line on screen, "" when none

    def write(self, text: str) -> int:
        if self.line:
            self.stream.write(CLEAR_LINE)
        n = self.stream.write(text)
        if self.line and text.endswith("\n"):
            self.stream.write(self.line)
        return n

    def flush(self) -> None:
        self.stream.flush()

    def show(self, line: str) -> None:
        """Draw (or redraw) the progress line in place."""
        self.line = line
        self.stream.write(CLEAR_LINE + line)
        self.stream.flush()

    def done(self) -> None:
        """Leave the last progress line on screen and end it."""
        if self.line:
            self.stream.write("\n")
            self.stream.flush()
        self.line = ""


progress = ProgressStream(sys.stderr)


def configure_logging(level: str = "info", fmt: str | None = None) -> None:
    """Log to stderr. fmt: 'json' | 'console' | None (console on a TTY, else json; $VEHICLE_AGENT_LOG_FORMAT wins)."""
    fmt = os.environ.get("VEHICLE_AGENT_LOG_FORMAT") or fmt or ("console" if sys.stderr.isatty() else "json")
    progress.stream = sys.stderr
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
        logger_factory=structlog.PrintLoggerFactory(file=progress),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    if not any(isinstance(h, LibraryLogs) for h in logging.root.handlers):
        logging.root.addHandler(LibraryLogs())


class LibraryLogs(logging.Handler):
    """The libraries' own log records (cantools, python-can, the IoT Hub SDK, paho; warnings and up, the
    root logger's level) as `library_log` events: Python's last-resort handler printed them as plain
    text lines among the JSON ones, which a container's log collector cannot parse."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            structlog.get_logger().log(record.levelno, "library_log", logger=record.name, message=record.getMessage(),
                                       **({"exc_info": record.exc_info} if record.exc_info else {}))
        except Exception:  # noqa: BLE001 - logging must never raise into the library
            self.handleError(record)


def set_level(level: str) -> None:
    """Change the level at run time (config swap, set_log_level method)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)))
