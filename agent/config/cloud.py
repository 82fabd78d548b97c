"""What the cloud may write: the writable properties, and the checks of a bus entry it sends.

Identity, state paths, the sink and its credentials stay local. A database is named, never given
as a path: `confine_database` keeps every name inside `databases_dir`.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.schema import BusConfig

# ------------------------------------------------------------------ what the cloud may write
# Identity, state paths, the sink and its credentials stay local. Of a bus the cloud may not set what
# reads local files (a replay log, python-can options that open paths) nor turn a bus into the
# simulator; those stay as the local file has them for a bus of the same name.
CLOUD_WRITABLE = ("buses", "collection", "batching", "encoding", "log_level", "store", "campaigns",
                  "software_update")
CLOUD_STORE_KEYS = ("max_bytes", "max_batches", "ttl_s")
LOCAL_BUS_KEYS = ("replay", "replay_rate", "options", "simulate")
CLOUD_BUS_KEYS = tuple(k for k in BusConfig.model_fields if k not in LOCAL_BUS_KEYS)
CLOUD_INTERFACES = ("auto", "socketcan", "virtual")  # besides the local file's interface of that bus
DATABASE_SUFFIXES = (".dbc", ".kcd", ".arxml", ".sym", ".xml")
MAX_DATABASE_BYTES = 64 * 1024 * 1024
_CHANNEL_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_NAME_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+ -]{0,127}$")


def database_name_problem(name: Any) -> str | None:
    """Why `name` cannot name a database file inside a folder (None: it can)."""
    if not isinstance(name, str) or not name:
        return "a database is named by a non-empty string"
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or not all(_NAME_PART_RE.match(p) for p in parts):
        return "only a file name inside databases_dir is allowed (no absolute path, no '..')"
    if not name.lower().endswith(DATABASE_SUFFIXES):
        return f"not a database file name (allowed: {', '.join(DATABASE_SUFFIXES)})"
    return None


def confine_database(name: Any, folder: Path, overlay: Path | None = None) -> Path:
    """The file a cloud-given database name means: a regular file inside `folder`, or ValueError.
    `overlay`: the active remote database version's folder (agent/remotedb), looked in first.

    Only names: no absolute path, no `..`, no symlink leading out of the folder, no device or FIFO.
    The reasons name the entry, never anything read from a file.
    """
    why = database_name_problem(name)
    if why:
        raise ValueError(why)
    if overlay is not None and (overlay / name).is_file():
        folder = overlay  # the active remote version has a file of that name: it wins
    root = folder.resolve()
    try:
        real = (root / name).resolve(strict=True)
        st = real.stat()
    except (OSError, RuntimeError):
        raise ValueError("not found in databases_dir") from None
    if not real.is_relative_to(root):
        raise ValueError("leads out of databases_dir")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")
    if st.st_size > MAX_DATABASE_BYTES:
        raise ValueError(f"larger than {MAX_DATABASE_BYTES // 2**20} MiB")
    return real


def cloud_bus_errors(index: int, bus: Any, local: Mapping[str, Any] | None, folder: Path,
                     overlay: Path | None = None) -> list[str]:
    """Why a bus entry written by the cloud is refused (empty: allowed)."""
    where = f"buses[{index}]"
    if not isinstance(bus, Mapping):
        return [f"{where}: expected an object"]
    errors = [f"{where}.{k}: not writable from the cloud (local only)" for k in bus if k in LOCAL_BUS_KEYS]
    errors += [f"{where}.{k}: unknown key" for k in bus if k not in CLOUD_BUS_KEYS and k not in LOCAL_BUS_KEYS]
    interface = bus.get("interface", "auto")
    if interface not in CLOUD_INTERFACES and interface != (local or {}).get("interface"):
        errors.append(f"{where}.interface: the cloud may set {', '.join(CLOUD_INTERFACES)} or the local one")
    channel = bus.get("channel", "vcan0")
    if not isinstance(channel, str) or not _CHANNEL_RE.match(channel):
        errors.append(f"{where}.channel: an interface name (letters, digits, _ . : -), not a path")
    databases = bus.get("databases")
    if isinstance(databases, list):
        for j, name in enumerate(databases[:64]):
            try:
                confine_database(name, folder, overlay)
            except ValueError as exc:
                shown = name if isinstance(name, str) and _NAME_PART_RE.match(name.rsplit("/", 1)[-1]) else "?"
                errors.append(f"{where}.databases[{j}] ({shown[:64]!r}): {exc}")
    return errors


def localize_cloud_bus(bus: Mapping[str, Any], local: Mapping[str, Any] | None, folder: Path,
                       overlay: Path | None = None) -> dict[str, Any]:
    """A checked cloud bus entry as a config entry: database names made paths inside `folder`, and the
    local-only keys taken from the local file's bus of the same name."""
    out = {k: v for k, v in bus.items() if k in CLOUD_BUS_KEYS}
    if isinstance(bus.get("databases"), list):
        out["databases"] = [str(confine_database(name, folder, overlay)) for name in bus["databases"]]
    for key in LOCAL_BUS_KEYS:
        if local and key in local:
            out[key] = local[key]
    return out

