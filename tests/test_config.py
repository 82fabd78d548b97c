"""Config: validation errors with paths, env overrides, check-config and schema commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agent.config import ConfigError, build_config, load_config
from tests.conftest import CONFIG_DIR, run_cli


def _write(tmp_path: Path, data: dict, edge_dbc: Path) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_config_is_valid() -> None:
    res = run_cli("check-config")
    assert res.returncode == 0, res.stderr
    assert "OK (3 buses" in res.stdout


def test_errors_name_their_path(tmp_path: Path, edge_dbc: Path) -> None:
    path = _write(tmp_path, {
        "buses": [{"name": "pt", "databases": [str(edge_dbc)]},
                  {"name": "ch", "databases": ["missing.dbc"]}],
        "batching": {"max_bytes": 10_000_000},
        "collection": {"signals": [{"match": "X*", "policy": "period"}]},
    }, edge_dbc)
    res = run_cli("check-config", str(path))
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert any("batching.max_bytes" in ln and "262144" in ln for ln in lines), lines
    assert any("collection.signals[0]" in ln and "period_ms" in ln for ln in lines), lines
    # file errors are reported once the structure is valid
    path = _write(tmp_path, {"buses": [{"name": "pt", "databases": [str(edge_dbc)]},
                                       {"name": "ch", "databases": ["missing.dbc"]}]}, edge_dbc)
    res = run_cli("check-config", str(path))
    assert res.returncode == 2
    assert f"buses[1].databases[0]: file not found: {tmp_path / 'missing.dbc'}" in res.stderr


def test_broken_dbc_in_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dbc"
    bad.write_text('VERSION ""\nBU_: A\nBO_ 1 M: 8 A\n SG_ S : 0|8@1+ (1,0) [0|1 "" A\n')
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"buses": [{"name": "pt", "databases": ["bad.dbc"]}]}))
    res = run_cli("check-config", str(path))
    assert res.returncode == 2
    assert f"buses[0].databases[0]: {bad}:4:" in res.stderr


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("buses:\n  - name: pt\n    databases: [a.dbc\n")
    res = run_cli("check-config", str(path))
    assert res.returncode == 2
    assert "line 4" in res.stderr and "YAML syntax error" in res.stderr


def test_unknown_keys_and_duplicate_buses_rejected(edge_dbc: Path) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"buses": [{"name": "a", "databases": [str(edge_dbc)], "bitrat": 5},
                                {"name": "a", "databases": [str(edge_dbc)]}]})
    assert any(e.startswith("buses[0].bitrat") for e in err.value.errors)
    with pytest.raises(ConfigError) as err:
        build_config({"buses": [{"name": "a", "databases": [str(edge_dbc)]},
                                {"name": "a", "databases": [str(edge_dbc)]}]})
    assert "repeated: a" in str(err.value)


def test_env_overrides(tmp_path: Path, edge_dbc: Path) -> None:
    path = _write(tmp_path, {"buses": [{"name": "pt", "databases": [str(edge_dbc)]}]}, edge_dbc)
    cfg = load_config(path, env={"VEHICLE_AGENT_VEHICLE_ID": "WVW-123", "VEHICLE_AGENT_STATE_DIR": "/var/lib/x",
                                 "VEHICLE_AGENT__BATCHING__MAX_AGE_S": "2.5", "OTHER": "1"})
    assert cfg.vehicle_id == "WVW-123"
    assert cfg.state_dir == "/var/lib/x"
    assert cfg.batching.max_age_s == 2.5
    with pytest.raises(ConfigError) as err:
        load_config(path, env={"VEHICLE_AGENT__BATCHING__MAX_AGE_S": "-1"})
    assert "batching.max_age_s" in str(err.value)


def test_schema_is_the_config_contract() -> None:
    res = run_cli("schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert set(schema["properties"]) >= {"buses", "collection", "batching", "encoding", "store", "sink"}
    assert "base_dir" not in schema["properties"]
    import jsonschema

    default = yaml.safe_load((CONFIG_DIR / "agent.yaml").read_text())
    jsonschema.validate(default, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**default, "batching": {"max_samples": 0}}, schema)
