"""Desired state: one apply path for every control channel (IoT Hub twin, MQTT, the local file).

Every document first passes the guard (size, depth, 64-bit integers, finite numbers, Unicode). Then
each top-level property is validated, applied and acknowledged on its own (the IoT Plug and Play
convention `{"value", "ac": 200|400|500, "av": <$version>, "ad": "<why>"}`): a rejected property
never blocks the others, so a key the hub keeps after a 400 cannot hold back later changes. A full
document (the twin after a connect, the MQTT retained document) is applied the same way, property
by property; a key it no longer has falls back to the local config file.

Versions: a patch older than the applied `$version` is acked "stale"; a full twin with a lower
`$version` means the hub's sequence restarted (a re-created device): it wins, loudly.
The applied state is checked to be storable before it is applied, and saved, so an agent that
starts offline runs the last applied config.
"""

from __future__ import annotations

import copy
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import structlog

from agent.campaigns.engine import campaign_errors
from agent.checks import unmatched_rules
from agent.config import (
    CLOUD_STORE_KEYS,
    CLOUD_WRITABLE,
    AgentConfig,
    ConfigError,
    build_config,
    cloud_bus_errors,
    deep_merge,
    localize_cloud_bus,
)
from agent.decode import DatabaseError, load_databases
from agent.decode.database import NO_STRICT_HINT
from agent.download import redact
from agent.remotedb.document import PROPERTY as DATABASES
from agent.remotedb.document import parse_document, redacted_value
from agent.remotedb.updater import DatabaseUpdater, Refused
from agent.twin import guard

log = structlog.get_logger()

DESIRED_FILE = "desired.json"
WRITABLE = (*CLOUD_WRITABLE, DATABASES)   # `databases`: remote database versions (agent/remotedb/)
DATABASES_DIR = "databases"              # their store under the state dir
SOFTWARE_UPDATE = "software_update"      # its url's query is a SAS token: never echoed
ECHO_MAX_BYTES = 4096   # an ack echoes the value up to this size (the reported section has 32 KB in all)
_DELETE = object()
_ACTIVE: Any = object()   # _build's overlay: the active remote database version
MAX_UNKNOWN_ACKS = 16   # properties that are not writable acked by name; beyond, counted in the document's ack
PROPERTY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")  # what may be acked under its own name


def ack(value: Any, code: int, version: int | None, why: str) -> dict[str, Any]:
    return {"value": value, "ac": code, "av": version, "ad": why}


def _echo(value: Any, key: str = "") -> Any:
    """The value an ack repeats: the desired value, unless it is too large for the reported section;
    `databases` and `software_update` without their URLs' queries (SAS tokens are secrets)."""
    if key == DATABASES:
        value = redacted_value(value)
    elif key == SOFTWARE_UPDATE and isinstance(value, Mapping) and isinstance(value.get("url"), str):
        value = {**value, "url": redact(value["url"])}
    try:
        return value if len(orjson.dumps(value)) <= ECHO_MAX_BYTES else None
    except (TypeError, orjson.JSONEncodeError):
        return None


def database_reason(exc: DatabaseError, folder: Path) -> str:
    """A database error as the cloud may see it: the file's name, its line, a fixed reason. cantools'
    own message quotes the file's text, so it stays in the local log."""
    try:
        name = str(exc.path.resolve().relative_to(folder.resolve()))
    except (ValueError, OSError, RuntimeError):
        name = exc.path.name
    if exc.reason == "file not found":
        why = "file not found"
    elif "is already defined in" in exc.reason:
        why = "a frame id defined in two of the bus's databases"
    elif NO_STRICT_HINT in exc.reason:
        why = "refused by cantools' strict checks; it loads with `strict: false` on the bus"
    else:
        why = "not a database cantools can read"
    return f"{name}{f':{exc.line}' if exc.line else ''}: {why}"


def signal_errors(cfg: AgentConfig) -> list[str]:
    """Campaigns and the software update's guard that name signals the buses' databases lack, each
    line under the property it belongs to."""
    return [e if e.startswith("software_update") else f"campaigns: {e}" for e in campaign_errors(cfg)]


class DesiredState:
    """Turns desired documents into applied configs and acknowledgements."""

    def __init__(self, base: Mapping[str, Any], base_dir: Path, state_dir: Path,
                 apply: Callable[[AgentConfig], None]) -> None:
        self.base = dict(base)              # the local config file as a mapping (before any twin)
        self.base_dir = base_dir
        self.path = state_dir / DESIRED_FILE
        self.apply = apply
        self.desired: dict[str, Any] = {}   # the applied desired properties (writable keys only)
        self.version = 0                    # the highest desired $version seen
        self.document: dict[str, Any] = {}  # how the last document was taken: {"ac", "av", "ad"}
        self.version_reset: dict[str, Any] | None = None
        self.rejected_documents = 0
        self.rejected_properties = 0
        self.databases = DatabaseUpdater(state_dir / DATABASES_DIR)

    # ----------------------------------------------------------------- persistence
    def load(self) -> AgentConfig | None:
        """The config of the last applied desired state (for an offline start), or None.

        The saved state came from the cloud: it passes the same checks again, property by property
        (an upgrade may have tightened them); what fails now is dropped with a log line.
        """
        try:
            saved = guard.parse(self.path.read_bytes(), guard.Limits(4 * guard.MAX_DESIRED_BYTES))
            desired, version = dict(saved["desired"]), saved["version"]
            if not isinstance(version, int):
                raise TypeError("version is not an integer")
        except FileNotFoundError:
            return self._local_with_databases()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("desired_state_unreadable", file=str(self.path), error=str(exc),
                      action="starting with the local config file")
            return self._local_with_databases()
        accepted, errors = self._accept({k: v for k, v in desired.items() if k in WRITABLE}, {})
        for key, why in errors.items():
            log.error("desired_state_invalid", file=str(self.path), version=version, property=key, error=why,
                      action="this property falls back to the local config file")
        try:
            cfg = self._build(accepted)
        except (ConfigError, DatabaseError) as exc:
            log.error("desired_state_invalid", file=str(self.path), version=version, error=str(exc),
                      action="starting with the local config file")
            return self._local_with_databases()
        self.desired, self.version = accepted, version
        log.info("desired_state_loaded", version=version, keys=sorted(accepted))
        if DATABASES in accepted:   # a download the last run did not finish goes on
            self.databases.request(accepted[DATABASES], version)
        return cfg

    def _local_with_databases(self) -> AgentConfig | None:
        """The local config file with the active remote database version (from disk, no network), or
        None (no version active: the caller's config is the file's)."""
        if self.databases.overlay() is None:
            return None
        try:
            return self._build({})
        except (ConfigError, DatabaseError, ValueError) as exc:
            self.databases.deactivate(f"the active version does not fit the config file: {exc}")
            log.error("remote_databases_unusable", error=str(exc), action="using the local database files")
            return None

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{DESIRED_FILE}.tmp")
        tmp.write_bytes(orjson.dumps({"version": self.version, "desired": self.desired}))
        os.replace(tmp, self.path)

    # ----------------------------------------------------------------- building configs
    def _local_buses(self) -> dict[str, Mapping[str, Any]]:
        buses = self.base.get("buses")
        return {b["name"]: b for b in buses if isinstance(b, Mapping) and isinstance(b.get("name"), str)} \
            if isinstance(buses, list) else {}

    def _databases_folder(self) -> Path:
        folder = Path(os.path.expanduser(str(self.base.get("databases_dir") or ".")))
        return folder if folder.is_absolute() else self.base_dir / folder

    def _build(self, desired: Mapping[str, Any], overlay: Path | None = _ACTIVE) -> AgentConfig:
        """The config of `desired` over the local file; bus database names resolve in `overlay` (a remote
        database version's folder; default: the active one) first, then in databases_dir."""
        if overlay is _ACTIVE:
            overlay = self.databases.overlay()
        merged = deep_merge(self.base, {k: v for k, v in desired.items() if k not in ("buses", DATABASES)})
        folder = self._databases_folder()
        if "buses" in desired:  # a list replaces the file's list as a whole
            buses = desired["buses"]
            if isinstance(buses, list):
                buses = [localize_cloud_bus(b, self._local_bus(b), folder, overlay) if isinstance(b, Mapping) else b
                         for b in buses]
            merged["buses"] = buses
        elif overlay is not None and isinstance(merged.get("buses"), list):
            merged["buses"] = [_overlay_bus(b, self.base_dir, folder, overlay) for b in merged["buses"]]
        return build_config(merged, base_dir=self.base_dir, source="desired")

    # ----------------------------------------------------------------- remote databases (agent/remotedb)
    def candidate(self, overlay: Path | None) -> AgentConfig:
        """The applied desired state's config with `overlay` as the database version (Refused: why not)."""
        try:
            return self._build(self.desired, overlay)
        except ConfigError as exc:
            raise Refused("; ".join(exc.errors)) from None
        except ValueError as exc:   # a bus's database name that the version does not have
            raise Refused(f"buses: {exc}") from None

    def activate(self, overlay: Path | None) -> None:
        """Swap `overlay` in live (the agent's apply_config), after the checks a new database set must
        pass: every campaign's signals and every collection rule that matched before still resolve.
        Raises Refused before changing anything."""
        cfg = self.candidate(overlay)
        try:
            errors = signal_errors(cfg)
            before = set(unmatched_rules(self._build(self.desired)))
            errors += [f"{w} (it did before)" for w in unmatched_rules(cfg)
                       if w not in before and w.endswith("matches no signal of the buses' databases")]
            if errors:
                raise Refused("; ".join(errors))
            self.apply(cfg)
        except DatabaseError as exc:
            log.warning("remote_databases_unusable", file=str(exc.path), line=exc.line, error=exc.reason)
            raise Refused(database_reason(exc, overlay or self._databases_folder())) from None
        except (ConfigError, ValueError) as exc:
            raise Refused(str(exc)) from None

    def _local_bus(self, bus: Any) -> Mapping[str, Any] | None:
        """The local file's bus of the same name as a cloud bus entry (its local-only keys are kept)."""
        name = bus.get("name") if isinstance(bus, Mapping) else None
        return self._local_buses().get(name) if isinstance(name, str) else None

    def rebase(self, base: Mapping[str, Any]) -> AgentConfig:
        """A new local config file (SIGHUP): the applied desired state laid over it, validated, applied.

        Raises ConfigError/DatabaseError and changes nothing when the new file (with the desired
        state over it) is not a valid config: the agent keeps running its current config.
        """
        old = self.base
        self.base = dict(base)
        try:
            cfg = self._build(self.desired)
            self.apply(cfg)
        except BaseException:
            self.base = old
            raise
        log.info("config_file_reloaded", desired_version=self.version)
        return cfg

    # ----------------------------------------------------------------- one property
    def _refusal(self, key: str, value: Any) -> str | None:
        """Why the cloud may not write `value` to `key` at all (before any config is built)."""
        if key not in WRITABLE:
            return f"{guard.short(key)}: not writable from the cloud (writable: {', '.join(WRITABLE)})"
        if key == "store" and isinstance(value, Mapping):
            denied = [k for k in value if k not in CLOUD_STORE_KEYS]
            if denied:
                return "; ".join(f"store.{guard.short(k)}: not writable from the cloud" for k in denied)
        if key == "buses" and isinstance(value, list):
            folder, overlay = self._databases_folder(), self.databases.overlay()
            errors = [e for i, bus in enumerate(value)
                      for e in cloud_bus_errors(i, bus, self._local_bus(bus), folder, overlay)]
            if errors:
                return "; ".join(errors)
        if key == DATABASES and value is not None:
            try:
                parse_document(value)
            except ValueError as exc:
                return str(exc)
        try:
            orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError):
            return f"{key}: cannot be stored (not plain JSON)"
        return None

    def _try(self, key: str, trial: Mapping[str, Any]) -> str | None:
        """Build the config of `trial` (and load a changed bus's databases); the reason it fails, or None."""
        if key == DATABASES:
            return None   # checked once its files are here (agent/remotedb/updater.py)
        try:
            cfg = self._build(trial)
            if key == "buses":
                for bus in cfg.buses:
                    load_databases([cfg.resolve(p) for p in bus.databases], strict=bus.strict)
            if key in ("buses", "campaigns", "software_update"):  # they name signals of the buses' databases
                errors = signal_errors(cfg)
                if errors:
                    return "; ".join(errors)
        except ConfigError as exc:
            return "; ".join(exc.errors)
        except DatabaseError as exc:  # (a ValueError too: first)
            log.warning("desired_database_unusable", file=str(exc.path), line=exc.line, error=exc.reason)
            return f"buses: {database_reason(exc, self._databases_folder())}"
        except ValueError as exc:  # a database name that is no longer confined (changed under us)
            return f"{key}: {exc}"
        return None

    def _accept(self, changes: Mapping[str, Any], base: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Lay `changes` (key -> value or _DELETE) over `base` one property at a time; (accepted, refusals)."""
        accepted = dict(base)
        errors: dict[str, str] = {}
        for key, value in changes.items():
            if value is _DELETE:
                trial = {k: v for k, v in accepted.items() if k != key}
            else:
                why = self._refusal(key, value)
                if why:
                    errors[key] = why
                    continue
                trial = {**accepted, key: value}
            why = self._try(key, trial)
            if why:
                errors[key] = why
            else:
                accepted = trial
        return accepted, errors

    # ----------------------------------------------------------------- documents
    def _document(self, code: int, version: Any, why: str) -> dict[str, Any]:
        self.document = {"ac": code, "av": version if isinstance(version, int) else None, "ad": why}
        return self.document

    def reject_document(self, why: str, version: Any = None) -> dict[str, Any]:
        """A document refused as a whole (outside the limits, not an object, no usable $version)."""
        self.rejected_documents += 1
        log.warning("desired_rejected", error=why, version=version if isinstance(version, int) else None)
        return {}

    def handle(self, doc: Any, *, full: bool, at_connect: bool = False) -> dict[str, Any]:
        """Apply a desired document; returns the acks per property (empty when there is nothing to ack).

        `full` is the whole desired section (twin after a connect, MQTT's retained document): it
        replaces the desired state. Otherwise `doc` is a patch over the applied state (null deletes a key).
        `at_connect`: the cloud's whole state as read on a (re)connect; a lower `$version` there means
        the cloud's sequence restarted, and the cloud wins. Anywhere else a lower `$version` is stale.
        `self.document` then says how the document as a whole was taken.
        """
        try:  # the document's size as a whole; depth and values are checked per property below
            guard.check(doc, guard.Limits(4 * guard.MAX_DESIRED_BYTES, max_depth=guard.UNLIMITED_DEPTH),
                        size_only=True)
        except guard.Rejected as exc:
            self._document(400, None, f"desired document refused: {exc}")
            return self.reject_document(str(exc))
        if not isinstance(doc, dict):
            self._document(400, None, "desired document refused: expected a JSON object")
            return self.reject_document("not an object")
        version = doc.get("$version")
        if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= guard.INT64_MAX:
            why = 'refused: "$version" must be a non-negative 64-bit integer'
            self._document(400, None, f"desired document {why}")
            self.reject_document("no usable $version")
            return {k: ack(None, 400, None, why) for k in doc if isinstance(k, str) and PROPERTY_NAME.match(k)}
        body = {k: v for k, v in doc.items() if not k.startswith("$")}
        refused: dict[str, str] = {}
        for key, value in body.items():
            try:
                guard.check({key: value}, guard.DESIRED)
            except guard.Rejected as exc:
                refused[key] = f"{guard.short(key)}: refused: {exc}"
        if version < self.version and not (full and at_connect):
            why = f"stale: $version {version} is older than the applied {self.version}"
            log.warning("desired_stale", version=version, applied=self.version, keys=sorted(map(guard.short, body)))
            self._document(400, version, why)
            self.rejected_properties += len(body)
            return {k: ack(_echo(v, k), 400, version, why) for k, v in body.items() if PROPERTY_NAME.match(k)}
        if version == self.version and not full:
            log.info("desired_repeated", version=version)  # the same patch delivered twice
            self._document(200, version, "already applied")
            return {}
        if version < self.version:
            self.version_reset = {"from": self.version, "to": version, "at": time.time()}
            log.warning("desired_version_reset", applied=self.version, received=version,
                        action="the hub's version sequence restarted (re-created device?): applying its twin")
        return self._apply_properties(body, version, full=full, refused=refused)

    def _apply_properties(self, body: dict[str, Any], version: int, *, full: bool,
                          refused: dict[str, str]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if full:
            changes.update({k: _DELETE for k in self.desired if k not in body})
        for key, value in body.items():
            if key in refused:
                continue
            if value is None:
                changes[key] = _DELETE
            elif full or not (isinstance(value, Mapping) and isinstance(self.desired.get(key), Mapping)):
                changes[key] = copy.deepcopy(value)
            else:
                changes[key] = deep_merge(self.desired[key], value)
        unchanged = {k for k, v in changes.items() if v is not _DELETE and self.desired.get(k) == v}
        base = {k: v for k, v in self.desired.items() if k not in changes or k in unchanged}
        accepted, errors = self._accept({k: v for k, v in changes.items() if k not in unchanged}, base)
        errors.update(refused)
        self.version = version
        acks: dict[str, Any] = {}
        code, why = 200, "applied"
        if accepted != self.desired:
            try:
                orjson.dumps({"version": version, "desired": accepted})
                if _without_databases(accepted) != _without_databases(self.desired):
                    self.apply(self._build(accepted))   # `databases` alone swaps nothing now: the updater will
            except (ConfigError, DatabaseError, ValueError, TypeError, OSError, orjson.JSONEncodeError) as exc:
                log.error("desired_apply_failed", version=version, error=str(exc))
                code, why = 500, f"valid but could not be applied: {type(exc).__name__}"
            else:
                self.desired = accepted
                try:
                    self._save()
                except OSError as exc:
                    log.warning("desired_state_not_saved", file=str(self.path), error=str(exc))
        unnamed = unknown = 0
        for key, value in body.items():
            if not PROPERTY_NAME.match(key):
                unnamed += 1  # a reported property cannot carry this name (the hub would refuse the whole patch)
            elif key not in WRITABLE and (unknown := unknown + 1) > MAX_UNKNOWN_ACKS:
                pass  # counted below: thousands of junk keys must not make an ack patch the hub refuses
            elif key in errors:
                acks[key] = ack(None if key in refused else _echo(value, key), 400, version, errors[key])
            else:
                acks[key] = ack(_echo(value, key), code, version, why)
        if DATABASES not in errors and (DATABASES in body or DATABASES in changes) and code == 200:
            db_ack = self.databases.request(accepted.get(DATABASES), version)   # 200, 202 or 400
            if DATABASES in acks:
                acks[DATABASES] = db_ack
        self.rejected_properties += len(errors)
        if errors:
            log.warning("desired_rejected", version=version, errors={guard.short(k): v for k, v in errors.items()})
        applied = sorted(k for k in body if k not in errors)
        if applied:
            log.info("desired_applied", version=version, keys=applied, code=code)
        summary = "applied" if not errors else f"received; {len(errors)} of {len(body)} properties refused"
        if unnamed:
            summary += f" ({unnamed} with names that cannot be reported)"
        if unknown > MAX_UNKNOWN_ACKS:
            summary += f" ({unknown - MAX_UNKNOWN_ACKS} more unknown properties not acked one by one)"
        self._document(200, version, summary)
        return acks

    def report(self) -> dict[str, Any]:
        """The `control` section's desired part: the applied version, the last document, a version reset."""
        return {"desired_version": self.version, "last_document": dict(self.document),
                "rejected_documents": self.rejected_documents, "rejected_properties": self.rejected_properties,
                "version_reset": self.version_reset}


def _without_databases(desired: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in desired.items() if k != DATABASES}


def _overlay_bus(bus: Any, base_dir: Path, folder: Path, overlay: Path) -> Any:
    """A local config file's bus with each database inside `folder` replaced by the file of the same
    name in `overlay` (the active remote version), where it has one."""
    if not isinstance(bus, Mapping) or not isinstance(bus.get("databases"), list):
        return bus
    root = os.path.normpath(folder)
    out = []
    for entry in bus["databases"]:
        if isinstance(entry, str):
            path = os.path.normpath(base_dir / os.path.expanduser(entry))
            name = os.path.relpath(path, root)
            if not name.startswith("..") and (overlay / name).is_file():
                entry = str(overlay / name)
        out.append(entry)
    return {**bus, "databases": out}

