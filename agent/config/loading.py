"""Loading a config: the YAML file, environment overrides over it, validation into an AgentConfig.

Every error is a `path: reason` line blamed on where it came from (the file, line and column of a
YAML error; the environment variable that set a path), because a telematics engineer fixes a config
by reading the error, not the code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent.config.diff import deep_merge
from agent.config.environment import OVERRIDES, PREFIX, nested_path, unknown_variables
from agent.config.schema import SINK_MODELS, AgentConfig, sink_type

DEFAULT_CONFIG = Path("config/agent.yaml")
ENV_PREFIX = PREFIX
NAME_LIKE = re.compile(r"[A-Za-z_-]{1,16}")   # `iotub`, `kafka`: a name, not a secret (no digits, short)


class ConfigError(ValueError):
    """A config that cannot be used, with one human-readable line per problem."""

    def __init__(self, errors: list[str], source: str = "config") -> None:
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: " + "; ".join(errors))


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _name_shown(value: str) -> str:
    """A mistyped name as an error repeats it (` 'iotub'`), or nothing: a value that is not a short word
    may be a secret set in the wrong place (a connection string or a key in VEHICLE_AGENT_SINK)."""
    return f" {value!r}" if NAME_LIKE.fullmatch(value) else ""


def validation_errors(exc: ValidationError) -> list[str]:
    """pydantic errors as `path: message` lines. The sink union's tag is not part of a path
    (`sink.path`, not `sink.file.path`); a key of another sink says which sink it is not a setting of."""
    lines = []
    for err in exc.errors():
        loc, msg = tuple(err["loc"]), err["msg"].removeprefix("Value error, ")
        if err["type"] == "sink_type":
            loc, msg = (*loc, "type"), f"unknown sink type{_name_shown(sink_type(err['input']))} (file, iothub or mqtt)"
        elif len(loc) >= 2 and loc[0] == "sink" and loc[1] in SINK_MODELS:
            tag, loc = loc[1], (loc[0], *loc[2:])
            if err["type"] == "extra_forbidden" and len(loc) == 2:
                owners = [t for t, model in SINK_MODELS.items() if loc[1] in model.model_fields]
                msg = (f"not a setting of the {tag} sink (sink.type: {tag})"
                       + (f"; it is a setting of the {' and '.join(owners)} sink" if owners else ""))
        lines.append(f"{_format_loc(loc)}: {msg}")
    return lines


SECRET_MARKS = ("SharedAccessKey=", "SharedAccessSignature", "sig=", "-----BEGIN")


def file_shown(name: str, path: Path) -> str:
    """A file named where a secret's file is expected, as an error may show it: the path, unless the
    name looks like the secret itself (a connection string, a SAS, a PEM key pasted where its file's
    name goes, a sloppy and common mistake), which must never reach a log or a terminal."""
    if any(mark in name for mark in SECRET_MARKS) or any(c in name for c in ";\n"):
        return "a name that looks like a secret, not a file name (not shown)"
    return str(path)


def _check_files(cfg: AgentConfig) -> list[str]:
    errors = []
    for i, bus in enumerate(cfg.buses):
        for j, db in enumerate(bus.databases):
            path = cfg.resolve(db)
            if not path.is_file():
                errors.append(f"buses[{i}].databases[{j}]: file not found: {path}")
        if bus.replay and not cfg.resolve(bus.replay).is_file():
            errors.append(f"buses[{i}].replay: file not found: {cfg.resolve(bus.replay)}")
    sink_files = {
        "mqtt": ("ca_file", "cert_file", "key_file"),
        "iothub": ("server_verification_cert", "x509_cert_file", "x509_key_file", "connection_string_file"),
    }.get(cfg.sink.type, ())
    section = getattr(cfg.sink, cfg.sink.type, None)
    for key in sink_files:
        value = getattr(section, key, None)
        if value and not cfg.resolve(value).is_file():
            errors.append(f"sink.{cfg.sink.type}.{key}: file not found: {file_shown(value, cfg.resolve(value))}")
    return errors


def build_config(data: Mapping[str, Any], *, base_dir: str | Path = ".", source: str = "config") -> AgentConfig:
    """Validate a mapping into an AgentConfig, or raise ConfigError listing every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"(top level): expected a mapping, got {type(data).__name__}"], source)
    try:
        cfg = AgentConfig.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as exc:
        raise ConfigError(validation_errors(exc), source) from None
    errors = _check_files(cfg)
    if errors:
        raise ConfigError(errors, source)
    return cfg



def _env_items(env: Mapping[str, str]) -> Iterator[tuple[str, tuple[str, ...], Any]]:
    """(variable, config path, value) of every override variable; a value that is not YAML is an
    error naming its variable."""
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        rest = key[len(ENV_PREFIX):]
        if rest in OVERRIDES:
            yield key, OVERRIDES[rest], value
        elif path := nested_path(key):
            try:
                parsed = parse_yaml(value)
            except yaml.YAMLError as exc:
                raise ConfigError([f"not a YAML value: {getattr(exc, 'problem', None) or exc}"],
                                  f"environment variable {key}") from None
            yield key, path, parsed


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """`VEHICLE_AGENT_VEHICLE_ID`, `VEHICLE_AGENT_STATE_DIR`, `VEHICLE_AGENT_LOG_LEVEL`, `VEHICLE_AGENT_SINK`,
    and any nested key as `VEHICLE_AGENT__batching__max_age_s=5` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for key, path, value in _env_items(env):
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"sets a key inside {part}, which another variable sets as a whole"],
                                  f"environment variable {key}")
        node[path[-1]] = value
    return out


def env_sources(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each config path an environment variable sets (`batching.max_age_s`, as errors write paths) and
    that variable, so an error is blamed on the variable and not on the file it overrides."""
    return {".".join(path): key for key, path, _ in _env_items(os.environ if env is None else env)}


def error_source(error: str, source: str, sources: Mapping[str, str]) -> str:
    """Where an error line (`path: message`) came from: the variable that set its path, else `source`."""
    where = error.split(": ", 1)[0]
    for path in sorted(sources, key=len, reverse=True):
        if where == path or where.startswith((path + ".", path + "[")):
            return f"environment variable {sources[path]} (over {source})"
    return source



class _ConfigLoader(yaml.SafeLoader):
    """YAML as a config is written: a key given twice in one mapping is an error naming both lines
    (PyYAML keeps the last one silently, so a second `collection:` pasted at the end of a file would
    drop the first without a word). Merge keys (`<<: *defaults`) are still overridden by explicit keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):  # PyYAML's own check raises the error for any other node
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first.get(key)
                except TypeError:   # an unhashable key: SafeLoader's own error below says so
                    continue
                if line is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice in one mapping (first on line {line + 1})",
                        key_node.start_mark)
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """PyYAML's constructors raise ValueError and friends for some values (`2024-13-01` is an
        implicit date, `!!timestamp x`): a YAML error at the value's line like any other."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(None, None, f"not a valid value: {exc}",
                                                    node.start_mark) from None


MAX_YAML_NODES = 100_000   # a config has hundreds; aliases may not expand one into billions
MAX_YAML_DEPTH = 64


def parse_yaml(text: str) -> Any:
    """The one YAML parser of configs (files and environment values): safe, duplicate keys refused,
    and what it returns is a tree a validator can walk (no alias cycle, bounded after aliases)."""
    try:
        value = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep") from None
    _check_tree(value)
    return value


def _check_tree(value: Any) -> None:
    """Refuse a value that refers to itself through an alias, is nested deeper than MAX_YAML_DEPTH or
    holds more than MAX_YAML_NODES values once aliases are expanded (what validation would walk)."""
    count = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise yaml.YAMLError(f"more than {MAX_YAML_NODES} values once aliases are expanded")
        if depth > MAX_YAML_DEPTH:
            raise yaml.YAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep (or an alias refers to itself)")
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for pair in node.items() for child in pair)
        elif isinstance(node, (list, tuple, set)):
            stack.extend((child, depth + 1) for child in node)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error names the file, line and column."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"file not found: {path}"], str(path)) from None
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # e.g. a comment saved as Latin-1 or Windows-1252
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([f"line {line}, column {column}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                           "save the file as UTF-8"], str(path)) from None
    try:
        return parse_yaml(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}YAML syntax error: {problem}"], str(path)) from None


def config_path(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The config file to use: the argument, else $VEHICLE_AGENT_CONFIG, else config/agent.yaml."""
    env = os.environ if env is None else env
    return Path(path or env.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG)


def load_config_data(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The config file as a mapping with environment overrides laid over it (not yet validated)."""
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError([f"(top level): expected a mapping, got {type(data).__name__}"], str(path))
    env = os.environ if env is None else env
    overrides = _env_overrides(env)
    merged = deep_merge(_sink_chosen_by_env(data, overrides), overrides)
    # a typo refused, not ignored (agent/config/environment.py); secrets' variables the file names count
    # even when the environment chose another sink than the file's
    unknown = unknown_variables(env, [data, merged])
    if unknown:
        raise ConfigError(unknown, "environment")
    return merged


def _sink_chosen_by_env(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> Mapping[str, Any]:
    """`VEHICLE_AGENT_SINK` picks another sink than the file's (the container's `iothub` over the bundled
    config's `file`): the file's settings of its own sink are not the chosen sink's, so they are left out;
    what the environment itself sets for the chosen sink stays and is checked."""
    chosen = overrides.get("sink", {}).get("type") if isinstance(overrides.get("sink"), Mapping) else None
    section = data.get("sink")
    if not isinstance(chosen, str) or chosen not in SINK_MODELS or not isinstance(section, Mapping) \
            or sink_type(section) == chosen:
        return data
    fields = SINK_MODELS[chosen].model_fields
    return {**data, "sink": {k: v for k, v in section.items() if k in fields}}


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """The config from a YAML file (default: $VEHICLE_AGENT_CONFIG or config/agent.yaml) plus environment."""
    path = config_path(path, env)
    return build_config(load_config_data(path, env), base_dir=path.parent.resolve(), source=str(path))

