"""The `VEHICLE_AGENT_*` variables the agent reads, and a refusal of any other.

A variable the agent does not read used to be ignored without a word: `VEHICLE_AGENT_SINK_TYPE=iothub`
(one underscore where a nested key wants two) left the car on the file sink, a misspelled secret's
name left the sink without its secret. Every variable with the prefix is now one of these, or the
config is refused (exit 2, like any other config error) naming the variable and the closest name
the agent knows. Only names are ever shown: a value may be a secret.

  * the overrides of a few keys (`VEHICLE_AGENT_SINK`, ...), and `VEHICLE_AGENT__<key>__<key>` for any
    key, whose path the schema checks like a key of the file;
  * `VEHICLE_AGENT_CONFIG` and `VEHICLE_AGENT_LOG_FORMAT`, read before there is a config;
  * where secrets are (`*_env` settings: their defaults, and the names the config gives them);
  * the project's test tools' own variables, which a developer's shell passes to every agent a test starts;
  * what Kubernetes and Docker links set beside a service named vehicle-agent (`PLATFORM`), which a
    refusal would turn into a pod that never starts.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from agent.config.schema import SINK_MODELS, AgentConfig

PREFIX = "VEHICLE_AGENT_"
NESTED = PREFIX + "_"       # VEHICLE_AGENT__BATCHING__MAX_AGE_S: batching.max_age_s
# VEHICLE_AGENT_<name>: the config path it sets
OVERRIDES: dict[str, tuple[str, ...]] = {"VEHICLE_ID": ("vehicle_id",), "STATE_DIR": ("state_dir",),
                                         "LOG_LEVEL": ("log_level",), "SINK": ("sink", "type")}
READ_BEFORE_CONFIG = ("CONFIG", "LOG_FORMAT")   # agent/config/loading.config_path, agent/logs.py
TEST_TOOLS = ("ALLOW_SKIPS", "VCAN_VM", "SOAK_S")  # tests/conftest.py, tools/vcan-tests.sh, tests/test_vcan.py
# What container platforms set in every container beside a service or link named vehicle-agent, never
# meant for the agent: Kubernetes' service variables (VEHICLE_AGENT_SERVICE_HOST, VEHICLE_AGENT_PORT_8080_TCP_ADDR)
# in every pod of the namespace, Docker's legacy links (VEHICLE_AGENT_NAME, VEHICLE_AGENT_ENV_<var>).
PLATFORM = re.compile(r"VEHICLE_AGENT_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?"
                      r"|NAME|ENV_\w+)")


def nested_path(name: str) -> tuple[str, ...]:
    """The config path `VEHICLE_AGENT__A__B` sets (`("a", "b")`); () for any other name."""
    if not name.startswith(NESTED):
        return ()
    return tuple(p.lower() for p in name[len(NESTED):].split("__") if p)


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models a field holds (through Optional, unions and Annotated), not those inside lists."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []


def _inner(model: type[BaseModel], name: str, annotation: Any) -> list[type[BaseModel]]:
    """The models under a field; the sink's are all sinks' (its union is chosen by `type`)."""
    if model is AgentConfig and name == "sink":
        return list(SINK_MODELS.values())
    return _models(annotation)


def _tree(models: list[type[BaseModel]]) -> dict[str, Any]:
    """The keys a config may have under these models: {key: {its keys}}."""
    tree: dict[str, Any] = {}
    for model in models:
        for name, field in model.model_fields.items():
            if name == "base_dir":
                continue
            inner = _inner(model, name, field.annotation)
            tree.setdefault(name, {}).update(_tree(inner))
    return tree


SCHEMA = _tree([AgentConfig])


def _paths(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, sub in tree.items():
        yield (*prefix, key)
        yield from _paths(sub, (*prefix, key))


def _secret_names(models: list[type[BaseModel]]) -> Iterator[str]:
    """The default names of the variables secrets are read from (every `*_env` setting's default)."""
    for model in models:
        for name, field in model.model_fields.items():
            if name.endswith("_env") and isinstance(field.default, str):
                yield field.default
            inner = _inner(model, name, field.annotation)
            yield from _secret_names(inner)


def _configured_names(data: Any) -> Iterator[str]:
    """The variables a config names for its secrets (any `*_env` key's value)."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            if isinstance(key, str) and key.endswith("_env") and isinstance(value, str):
                yield value
            yield from _configured_names(value)
    elif isinstance(data, list):
        for value in data:
            yield from _configured_names(value)


KNOWN: frozenset[str] = frozenset({*(PREFIX + n for n in (*OVERRIDES, *READ_BEFORE_CONFIG, *TEST_TOOLS)),
                                   *_secret_names([AgentConfig])})
# what a misspelled name may have meant: the known names and the nested form of every key
CANDIDATES: tuple[str, ...] = (*sorted(KNOWN - {PREFIX + n for n in TEST_TOOLS}),
                               *(NESTED + "__".join(p).upper() for p in _paths(SCHEMA)))


def _schema_path(words: str, tree: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The config path whose keys joined by `_` are `words` (`sink_type` -> sink.type), or None."""
    for key, sub in tree.items():
        if words == key:
            return (key,)
        if words.startswith(key + "_") and (rest := _schema_path(words[len(key) + 1:], sub)):
            return (key, *rest)
    return None


def _words(name: str) -> str:
    """A name as its words, for comparing: upper case, no prefix, no underscores."""
    upper = name.upper()
    return upper.removeprefix(PREFIX).replace("_", "") if upper.startswith(PREFIX) else ""


def closest(name: str) -> str | None:
    """What an unknown name most likely meant: a known name spelled with other case or underscores
    (`VEHICLE_AGENT_LOGFORMAT`), else the nested variable of the key its words spell
    (`VEHICLE_AGENT_SINK_TYPE` -> `VEHICLE_AGENT__SINK__TYPE`), else the nearest name by its letters."""
    words = _words(name)
    if not words:
        return None
    by_words = {_words(c): c for c in reversed(CANDIDATES)}   # a known name before a nested one
    if words in by_words:
        return by_words[words]
    path = _schema_path("_".join(w for w in name.upper().removeprefix(PREFIX).lower().split("_") if w), SCHEMA)
    if path:
        return NESTED + "__".join(path).upper()
    found = difflib.get_close_matches(words, by_words, n=1, cutoff=0.75)
    return by_words[found[0]] if found else None


def unknown_variables(env: Mapping[str, str], data: Any) -> list[str]:
    """One `NAME: why` line per variable that looks like the agent's and is none it reads (names only:
    a value may be a secret). `data`: the config (file, overrides): the secrets' variables it names count."""
    known = KNOWN | set(_configured_names(data))
    lines = []
    for name in sorted(env):
        if not name.upper().startswith(PREFIX) or name in known or nested_path(name) or PLATFORM.fullmatch(name):
            continue
        hint = closest(name)
        lines.append(f"{name}: not a variable vehicle-agent reads"
                     + (f"; did you mean {hint}?" if hint else " (README: Environment variables)"))
    return lines
