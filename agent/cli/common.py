"""What every subcommand shares: exit codes, stdout lines, and the one way the config is loaded."""

from __future__ import annotations

import sys
from typing import Any

from agent.config import (
    AgentConfig,
    ConfigError,
    build_config,
    config_path,
    env_sources,
    error_source,
    load_config_data,
)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141  # as a shell reports SIGINT and SIGPIPE


def out(line: bytes | str) -> None:
    """One result line on stdout (diagnostics go to stderr)."""
    if isinstance(line, bytes):
        sys.stdout.buffer.write(line + b"\n")
    else:
        sys.stdout.write(line + "\n")


def print_config_error(exc: ConfigError) -> None:
    """One line per error, each blamed on where it came from: the file, or the environment variable
    that overrode the key (`VEHICLE_AGENT__BATCHING__MAX_AGE=5` is not the YAML file's fault)."""
    try:
        sources = env_sources()
    except ConfigError:
        sources = {}
    for err in exc.errors:
        sys.stderr.write(f"{error_source(err, exc.source, sources)}: {err}\n")


def load_config(path: str | None) -> tuple[AgentConfig, dict[str, Any]]:
    """The config (FILE, else $VEHICLE_AGENT_CONFIG, else config/agent.yaml, with the environment laid
    over it) and the mapping it was built from; raises ConfigError."""
    file = config_path(path)
    data = load_config_data(file)
    return build_config(data, base_dir=file.parent.resolve(), source=str(file)), data


def config_or_exit(path: str | None) -> tuple[AgentConfig, dict[str, Any]]:
    """`load_config`, or exit 2 with one line per error."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print_config_error(exc)
        raise SystemExit(EXIT_USAGE) from None
