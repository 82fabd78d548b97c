"""Desired state: one apply path for every transport (IoT Hub twin, MQTT twin topic).

A desired document (full twin after a connect, or a patch) is merged over the last applied desired
state, laid over the local config file, validated as a whole, and only then swapped into the
running pipeline. Either every property of a patch applies or none does. Each property is
acknowledged with the IoT Plug and Play writable-property convention:
`{"value": ..., "ac": 200|400|500, "av": <desired $version>, "ad": "<why>"}`.
The applied desired state is persisted, so an agent that starts offline runs the last twin config.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import structlog

from agent.config import AgentConfig, ConfigError, build_config, deep_merge
from agent.decode import DatabaseError

log = structlog.get_logger()

DESIRED_FILE = "desired.json"
# What the cloud may change at run time. Identity, state paths and the sink's credentials stay local.
WRITABLE = ("buses", "collection", "batching", "encoding", "log_level", "store")
_STORE_WRITABLE = ("max_bytes", "max_batches", "ttl_s")


def _strip_meta(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not k.startswith("$")}


def ack(value: Any, code: int, version: int, why: str) -> dict[str, Any]:
    return {"value": value, "ac": code, "av": version, "ad": why}


class DesiredState:
    """Turns desired documents into applied configs and acknowledgements."""

    def __init__(self, base: Mapping[str, Any], base_dir: Path, state_dir: Path,
                 apply: Callable[[AgentConfig], None]) -> None:
        self.base = dict(base)              # the local config file as a mapping (before any twin)
        self.base_dir = base_dir
        self.path = state_dir / DESIRED_FILE
        self.apply = apply
        self.desired: dict[str, Any] = {}   # the applied desired properties (writable keys only)
        self.version = 0                    # the desired $version they came with

    # ----------------------------------------------------------------- persistence
    def load(self) -> AgentConfig | None:
        """The config of the last applied desired state (for an offline start), or None."""
        try:
            saved = orjson.loads(self.path.read_bytes())
            desired, version = dict(saved["desired"]), int(saved["version"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("desired_state_unreadable", file=str(self.path), error=str(exc),
                      action="starting with the local config file")
            return None
        try:
            cfg = self._build(desired)
        except (ConfigError, DatabaseError) as exc:
            log.error("desired_state_invalid", file=str(self.path), version=version, error=str(exc),
                      action="starting with the local config file")
            return None
        self.desired, self.version = desired, version
        log.info("desired_state_loaded", version=version, keys=sorted(desired))
        return cfg

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{DESIRED_FILE}.tmp")
        tmp.write_bytes(orjson.dumps({"version": self.version, "desired": self.desired}))
        os.replace(tmp, self.path)

    # ----------------------------------------------------------------- apply
    def _build(self, desired: Mapping[str, Any]) -> AgentConfig:
        merged = deep_merge(self.base, desired)
        if "buses" in desired:  # a list replaces the file's list as a whole
            merged["buses"] = desired["buses"]
        return build_config(merged, base_dir=self.base_dir, source="desired")

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

    def _check_writable(self, patch: Mapping[str, Any]) -> list[str]:
        errors = []
        for key, value in patch.items():
            if key not in WRITABLE:
                errors.append(f"{key}: not writable from the cloud (writable: {', '.join(WRITABLE)})")
            elif key == "store" and isinstance(value, Mapping):
                errors += [f"store.{k}: not writable from the cloud" for k in value if k not in _STORE_WRITABLE]
        return errors

    def handle(self, doc: Mapping[str, Any], *, full: bool) -> dict[str, Any] | None:
        """Apply a desired document; returns the reported patch (acks), or None if it was stale.

        `full` is the whole desired section after a (re)connect: it replaces the desired state.
        Otherwise `doc` is a patch over the last applied state (null deletes a key).
        """
        version = doc.get("$version")
        if not isinstance(version, int):
            log.warning("desired_without_version", keys=sorted(doc))
            return None
        body = _strip_meta(doc)
        if version < self.version or (version == self.version and not full):
            log.info("desired_stale", version=version, applied=self.version)
            return None
        if full and version == self.version and body == self.desired:
            return None  # already running exactly this
        errors = self._check_writable(body)
        if not errors:
            candidate = copy.deepcopy(body) if full else deep_merge(self.desired, body)
            try:
                cfg = self._build(candidate)
            except ConfigError as exc:
                errors = list(exc.errors)
            except DatabaseError as exc:
                errors = [str(exc)]
        if errors:
            why = "; ".join(errors)
            log.warning("desired_rejected", version=version, errors=errors)
            self.version = version  # seen: a stale copy must not be retried, the next patch builds on ours
            return {k: ack(v, 400, version, why) for k, v in body.items()}
        try:
            self.apply(cfg)
        except (ConfigError, DatabaseError, ValueError, OSError) as exc:
            log.error("desired_apply_failed", version=version, error=str(exc))
            self.version = version
            return {k: ack(v, 500, version, f"valid but could not be applied: {exc}") for k, v in body.items()}
        self.desired, self.version = candidate, version
        try:
            self._save()
        except OSError as exc:
            log.warning("desired_state_not_saved", file=str(self.path), error=str(exc))
        log.info("desired_applied", version=version, keys=sorted(body))
        return {k: ack(v, 200, version, "applied") for k, v in body.items()}
