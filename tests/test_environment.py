"""The VEHICLE_AGENT_* variables (agent/config/environment.py), in process: which names the agent
reads, the line a refused one gets and the name it suggests (the CLI's exit 2 with these lines is
tests/test_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.config import ConfigError, load_config
from agent.config.environment import (
    CANDIDATES,
    KNOWN,
    SCHEMA,
    _paths,
    _secret_names,
    _tree,
    closest,
    nested_path,
    unknown_variables,
)
from agent.config.schema import AgentConfig
from tests.conftest import DATA

SECRETS = {"VEHICLE_AGENT_IOTHUB_CONNECTION_STRING", "VEHICLE_AGENT_IOTHUB_CONNECTION_STRING_FILE",
           "VEHICLE_AGENT_MQTT_PASSWORD", "VEHICLE_AGENT_MQTT_PASSWORD_FILE"}


def test_the_names_the_agent_reads() -> None:
    assert KNOWN == {f"VEHICLE_AGENT_{n}" for n in ("VEHICLE_ID", "STATE_DIR", "LOG_LEVEL", "SINK", "CONFIG",
                                                    "LOG_FORMAT", "ALLOW_SKIPS", "VCAN_VM", "SOAK_S")} | SECRETS
    assert set(_secret_names([AgentConfig])) == SECRETS, "every *_env setting's default"
    assert "VEHICLE_AGENT_ALLOW_SKIPS" not in CANDIDATES, "a test tool's name is never suggested"


def test_the_keys_a_nested_variable_may_name() -> None:
    tree = _tree([AgentConfig])
    assert tree["store"] == {k: {} for k in ("path", "max_bytes", "max_batches", "synchronous", "spill_max_bytes",
                                             "ttl_s", "wal_max_bytes", "quarantine_max_bytes")}
    assert {"type", "path", "iothub", "mqtt", "fault"} <= set(tree["sink"]), "every sink's keys under sink"
    assert tree["sink"]["iothub"]["output_name"] == {} and tree["sink"]["mqtt"]["topic_prefix"] == {}
    assert tree["ota"]["command"] == {"argv": {}, "timeout_s": {}}, "models through Optional and defaults"
    assert tree["buses"] == {}, "not into lists"

    def keys(t: dict) -> set[str]:
        return {k for key, sub in t.items() for k in (key, *keys(sub))}

    assert "base_dir" not in keys(tree)
    assert "VEHICLE_AGENT__SINK__IOTHUB__OUTPUT_NAME" in CANDIDATES and "VEHICLE_AGENT__OTA__COMMAND__ARGV" in CANDIDATES
    assert SCHEMA == tree
    assert list(_paths({"a": {"b": {"c": {}}}, "d": {}})) == [("a",), ("a", "b"), ("a", "b", "c"), ("d",)]


@pytest.mark.parametrize(("name", "path"), [
    ("VEHICLE_AGENT__BATCHING__MAX_AGE_S", ("batching", "max_age_s")),
    ("VEHICLE_AGENT__sink__iothub__output_name", ("sink", "iothub", "output_name")),
    ("VEHICLE_AGENT__A____B", ("a", "b")),
    ("VEHICLE_AGENT____", ()),
    ("VEHICLE_AGENT_SINK", ()),
    ("VEHICLE_AGENT_BATCHING__MAX_AGE_S", ()),
])
def test_the_path_a_nested_variable_sets(name: str, path: tuple[str, ...]) -> None:
    assert nested_path(name) == path


@pytest.mark.parametrize(("name", "meant"), [
    ("VEHICLE_AGENT_LOGFORMAT", "VEHICLE_AGENT_LOG_FORMAT"),             # a known name, other underscores
    ("vehicle_agent_sink", "VEHICLE_AGENT_SINK"),                         # other case
    ("VEHICLE_AGENT_S_I_N_K", "VEHICLE_AGENT_SINK"),                      # the known name, not VEHICLE_AGENT__SINK
    ("VEHICLE_AGENT_VEHICLEID", "VEHICLE_AGENT_VEHICLE_ID"),
    ("VEHICLE_AGENT_SINK_TYPE", "VEHICLE_AGENT__SINK__TYPE"),             # a key's words: its nested variable
    ("Vehicle_Agent_sink__iothub_output_name", "VEHICLE_AGENT__SINK__IOTHUB__OUTPUT_NAME"),
    ("VEHICLE_AGENT_STORE_TTL_S", "VEHICLE_AGENT__STORE__TTL_S"),
    ("VEHICLE_AGENT_BATCHIN__MAX_AGE_S", "VEHICLE_AGENT__BATCHING__MAX_AGE_S"),  # misspelled: by its letters
    ("VEHICLE_AGENT_IOTHUB_CONECTION_STRING", "VEHICLE_AGENT_IOTHUB_CONNECTION_STRING"),
    ("VEHICLE_AGENT_CONFIGG", "VEHICLE_AGENT_CONFIG"),
    ("VEHICLE_AGENT_ALLOWSKIPS", None),                                   # test tools are not suggested
    ("VEHICLE_AGENT_SI", None),                                           # too far from any name to guess
    ("VEHICLE_AGENT_MQTT", None),
    ("VEHICLE_AGENT_QQQQQ", None),
    ("VEHICLE_AGENT____", None),
    ("OTHER_SINK", None),
])
def test_the_name_an_unknown_variable_most_likely_meant(name: str, meant: str | None) -> None:
    assert closest(name) == meant


def test_unknown_names_are_refused_one_line_each_in_order_by_name_only() -> None:
    env = {"VEHICLE_AGENT_SINK_TYPE": "iothub", "VEHICLE_AGENT_QQQQQ": "s3cret", "VEHICLE_AGENT_SINK": "file",
           "VEHICLE_AGENT__BATCHING__MAX_AGE_S": "3", "VEHICLE_AGENT": "x", "OTHER": "y", "PATH": "/bin",
           "VEHICLE_AGENT____": "z", "vehicle_agent_log_level": "debug"}
    assert unknown_variables(env, {}) == [
        "VEHICLE_AGENT_QQQQQ: not a variable vehicle-agent reads (README: Environment variables)",
        "VEHICLE_AGENT_SINK_TYPE: not a variable vehicle-agent reads; did you mean VEHICLE_AGENT__SINK__TYPE?",
        "VEHICLE_AGENT____: not a variable vehicle-agent reads (README: Environment variables)",
        "vehicle_agent_log_level: not a variable vehicle-agent reads; did you mean VEHICLE_AGENT_LOG_LEVEL?"]
    assert unknown_variables({k: v for k, v in env.items() if k in KNOWN or nested_path(k)}, {}) == []


def test_the_variables_a_config_names_for_its_secrets_are_read() -> None:
    data = [{"sink": {"iothub": {"connection_string_env": "VEHICLE_AGENT_HUB_CS", "x509_pass_phrase_env": 7}}},
            {"buses": [{"name": "a", "key_env": "VEHICLE_AGENT_BUS_KEY"}], 3: "VEHICLE_AGENT_NOT_A_KEY",
             "mqtt": {"password_envx": "VEHICLE_AGENT_NOT_ENV"}}]
    env = dict.fromkeys(["VEHICLE_AGENT_HUB_CS", "VEHICLE_AGENT_BUS_KEY", "VEHICLE_AGENT_NOT_A_KEY",
                         "VEHICLE_AGENT_NOT_ENV"], "v")
    assert [line.split(":")[0] for line in unknown_variables(env, data)] == [
        "VEHICLE_AGENT_NOT_A_KEY", "VEHICLE_AGENT_NOT_ENV"]


def test_load_config_refuses_an_unknown_variable_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"buses": [{"name": "pt", "interface": "virtual", "channel": "x",
                                               "databases": [str(DATA / "edge.dbc")]}],
                                    "sink": {"type": "iothub", "iothub": {"connection_string_env": "VEHICLE_AGENT_CS"}}}))
    with pytest.raises(ConfigError) as err:
        load_config(path, env={"VEHICLE_AGENT_SINK_TYPE": "s3cret-value", "VEHICLE_AGENT_CS": "HostName=x"})
    assert "VEHICLE_AGENT_SINK_TYPE: not a variable vehicle-agent reads; did you mean VEHICLE_AGENT__SINK__TYPE?" in str(
        err.value)
    assert "s3cret" not in str(err.value) and "VEHICLE_AGENT_CS" not in str(err.value)
    cfg = load_config(path, env={"VEHICLE_AGENT_CS": "HostName=x", "VEHICLE_AGENT_SINK": "mqtt"})
    assert cfg.sink.type == "mqtt", "the file's sink's secret variable still counts when the environment picks another"
