"""What differs between two configs, and the one way a document is laid over another.

`deep_merge` is the only merge in the agent: environment overrides over the file, a desired patch
over the applied desired state, a reported patch over the reported document (MQTT, local file).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.config.schema import AgentConfig, BusConfig

RESTART_ONLY = ("state_dir", "sink", "store.path", "store.synchronous")


def restart_only_changes(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Settings that differ between two configs but are only read at start (the sink's connection,
    the state directory, the store file): a live swap leaves them as they were."""
    changed = []
    for path in RESTART_ONLY:
        a, b = old, new
        for part in path.split("."):
            a, b = getattr(a, part), getattr(b, part)
        if a != b:
            changed.append(path)
    return changed


def deep_merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A new mapping: `patch` laid over `base`, nested mappings merged, None deleting a key (twin semantics)."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out



def buses_to_restart(old: AgentConfig, new: AgentConfig) -> tuple[list[BusConfig], list[str]]:
    """The buses of `new` whose source must (re)start (new, or a setting other than its databases changed;
    the collectors are rebuilt anyway), and the names of the buses `new` no longer has."""
    before = {b.name: b for b in old.buses}
    restart = [bus for bus in new.buses if bus.name not in before
               or before[bus.name].model_dump(exclude={"databases"}) != bus.model_dump(exclude={"databases"})]
    removed = [name for name in before if name not in {b.name for b in new.buses}]
    return restart, removed
