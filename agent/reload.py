"""SIGHUP (`systemctl reload vehicle-agent`): the config file read again and swapped in live.

The cloud's last desired state is laid over the new file (it wins, as at start); a file that does
not parse or validate is logged and changes nothing; settings read only at start are named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from agent.config import ConfigError, load_config_data, restart_only_changes
from agent.decode import DatabaseError

log = structlog.get_logger()


def reload_from_file(agent: Any, file: Path) -> list[str] | None:
    """Apply `file` to the running agent. Returns the settings that wait for a restart, or None when
    the file was rejected (the running config stays)."""
    old = agent.cfg
    try:
        new = agent.desired.rebase(load_config_data(file))
    except ConfigError as exc:
        log.error("config_reload_rejected", file=str(file), errors=exc.errors, action="keeping the running config")
        return None
    except DatabaseError as exc:
        log.error("config_reload_rejected", file=str(exc.path), line=exc.line, errors=[exc.reason],
                  action="keeping the running config")
        return None
    except (OSError, ValueError) as exc:
        log.error("config_reload_rejected", file=str(file), errors=[str(exc)], action="keeping the running config")
        return None
    except Exception as exc:  # noqa: BLE001 - a signal handler: asyncio would print a bare traceback
        log.exception("config_reload_failed", file=str(file), error=repr(exc), action="keeping the running config")
        return None
    pending = restart_only_changes(old, new)
    if pending:
        log.warning("config_reload_needs_restart", file=str(file), settings=pending,
                    action="everything else is applied; these take effect at the next start")
    return pending
