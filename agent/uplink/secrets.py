"""The cloud sinks' secrets (IoT Hub connection string, MQTT password): from an environment variable,
else from the file a `*_FILE` variable or the config names, as container and systemd secrets are mounted.

Read when a sink builds its client; checked once when `vehicle-agent run` starts (agent/startup.py),
so a file that is named but cannot be read stops the agent with an error naming the variable and the
file instead of a retry loop that looks alive. No message here ever holds the secret itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from agent.config.loading import file_shown
from agent.uplink.base import SinkError


class SecretUnreadable(SinkError):
    """A secret's file is named but cannot be used (missing, unreadable, not text, empty)."""


def read_secret(value_env: str, file_env: str, config_file: str | None, config_key: str, base_dir: Path,
                env: Mapping[str, str]) -> str | None:
    """The secret from `$value_env`, else from the file `$file_env` or the config key names (relative to
    `base_dir`), surrounding whitespace (a file's trailing newline) stripped; None when neither is set."""
    value = env.get(value_env, "").strip()
    if value:
        return value
    named_by = f"${file_env}" if env.get(file_env) else config_key
    file = env.get(file_env) or config_file
    if not file:
        return None
    path = Path(file) if Path(file).is_absolute() else base_dir / file
    shown = file_shown(file, path)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretUnreadable(f"{named_by} names {shown}: cannot read it: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise SecretUnreadable(f"{named_by} names {shown}: not UTF-8 text") from None
    if not text:
        raise SecretUnreadable(f"{named_by} names {shown}: the file is empty")
    return text
