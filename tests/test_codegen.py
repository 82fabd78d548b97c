"""The generated hot path is readable: golden sources of a few messages under fixed policies,
`vehicle-agent debug codegen` prints them, and a traceback through generated code shows its lines.

A golden file changes only when the generated code does; look at the difference (it is the code
every frame runs), then write the new source with `vehicle-agent debug codegen` into the file.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import yaml

from agent.collect.codegen import Slot
from agent.collect.policy import Filter
from agent.compiler import compile_sampler
from agent.config import build_config
from agent.pipeline import build
from tests.conftest import DATA, run_cli

GOLDEN = DATA / "golden"
CONFIG = {
    "vehicle_id": "golden",
    "buses": [{"name": "pt", "databases": [str(DATA / "edge.dbc")]}],
    "collection": {"default": {"policy": "all"}, "signals": [
        {"match": "EngineSpeed", "policy": "on_change", "deadband": 0.5},
        {"match": "CoolantTemp", "policy": "on_change"},
        {"match": "Torque", "policy": "period", "period_ms": 100},
        {"match": "Gear", "policy": "min_interval", "min_interval_ms": 200},
        {"match": "BigEndianMsg.*", "policy": "on_change"},
        {"match": "TirePressure*", "policy": "period", "period_ms": 500}]},
}


def _generated(message: str) -> str:
    cfg = build_config(CONFIG, base_dir=Path.cwd())
    collector = build(cfg, on_batch=lambda _b: None).collectors["pt"]
    return "\n".join(f"# {name}\n{source}" for name, source in collector.generated(message)) + "\n"


@pytest.mark.parametrize("message", ["EngineData", "BigEndianMsg", "MuxMsg", "FloatMsg"])
def test_generated_source_is_the_golden_one(message: str) -> None:
    assert _generated(message) == (GOLDEN / f"{message}.py.txt").read_text()


def test_debug_codegen_prints_the_source(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    res = run_cli("debug", "codegen", "--config", str(cfg), "--message", "EngineData")
    assert res.returncode == 0, res.stderr
    assert res.stdout == (GOLDEN / "EngineData.py.txt").read_text()
    res = run_cli("debug", "codegen", "--config", str(cfg), "--message", "NoSuchMessage")
    assert res.returncode == 2 and "NoSuchMessage" in res.stderr


class _Exploding(Filter):
    """A filter of a rule the compiler does not know: the generated code calls its `offer`."""

    __slots__ = ()

    def offer(self, t: float, v: float) -> None:
        raise ZeroDivisionError("exploded")


def test_a_traceback_through_generated_code_shows_its_lines() -> None:
    sample = compile_sampler([Slot(_Exploding(), 1, ("b", "m", "s"), "s")], lambda _slot: [], None, "b:m page 3")
    with pytest.raises(ZeroDivisionError) as info:
        sample(1.7e9, (1.0,))
    text = "".join(traceback.format_exception(info.value))
    assert 'File "<vehicle-agent sampler b:m page 3>", line 4, in sample' in text
    assert "_e = F0.offer(t, v0)" in text


def test_the_source_shown_is_the_one_of_this_config_after_another_config_of_the_same_message() -> None:
    """A config swap back to earlier policies reuses the compiled code; its lines (tracebacks, `debug
    codegen`) are this config's, not those the other config registered under the same name."""
    golden = (GOLDEN / "EngineData.py.txt").read_text()
    assert _generated("EngineData") == golden
    other = build_config({**CONFIG, "collection": {"default": {"policy": "all"}}}, base_dir=Path.cwd())
    collector = build(other, on_batch=lambda _b: None).collectors["pt"]
    assert "\n".join(source for _name, source in collector.generated("EngineData")) not in golden
    assert _generated("EngineData") == golden
