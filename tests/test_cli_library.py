"""The library functions behind the subcommands (issue 18, item 4), called directly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from agent.bench import config_for_databases
from agent.can.source import simulation_target_problem
from agent.config import CollectionConfig, ConfigError, SignalPolicy
from agent.decode import FrameDecoder, load_databases
from agent.decode.logfile import DecodeStats, decode_log
from agent.health import not_alive_reason
from tests.conftest import CONFIG_DIR, DATA


def test_decode_log_accounts_for_every_line() -> None:
    stats = DecodeStats()
    records = list(decode_log(FrameDecoder(load_databases([DATA / "edge.dbc"])), DATA / "edge.log", stats))
    # 11 lines: 6 decoded, 0x7FF twice unknown, a short frame, an odd-length payload and a non-frame line
    assert [r["message"] for r in records] == ["EngineData", "J1939Speed", "BigEndianMsg", "FloatMsg", "MuxMsg",
                                               "FdMsg"]
    assert stats.decoded == 6 and stats.unknown == {0x7FF: 2} and stats.short == 1 and stats.bad == 2
    assert stats.as_log()["unknown_id_list"] == ["0x7FF"]
    wrong = DecodeStats()
    assert len(list(decode_log(FrameDecoder(load_databases([CONFIG_DIR / "dbc" / "body.dbc"])), DATA / "edge.log",
                                   wrong))) == 1
    assert wrong.decoded == 1 and sum(wrong.unknown.values()) == 8  # body.dbc happens to know 0x300 only


def test_not_alive_reason() -> None:
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    assert not_alive_reason({"updated": time.time(), "agent": me}) is None
    assert "s old" in not_alive_reason({"updated": time.time() - 60, "agent": me}, max_age=30)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    assert not_alive_reason({"updated": time.time(), "agent": {**me, "pid": pid}}) == \
        f"pid {pid}, which wrote the status, is not running"


def test_bench_config_for_databases_keeps_the_collection_policy() -> None:
    collection = CollectionConfig(signals=[SignalPolicy(match="Wheel*", policy="exclude")])
    cfg = config_for_databases([str(DATA / "edge.dbc")], collection)
    assert [b.name for b in cfg.buses] == ["bus0"] and cfg.buses[0].databases == [str(DATA / "edge.dbc")]
    assert cfg.collection == collection
    with pytest.raises(ConfigError) as err:
        config_for_databases(["missing.dbc"], collection)
    assert err.value.source == "--dbc" and "file not found" in err.value.errors[0]


def test_simulation_target_problem() -> None:
    assert simulation_target_problem("virtual", "nosuchcan7") is None
    assert simulation_target_problem("pcan", "PCAN_USBBUS1") is None
    problem = simulation_target_problem("auto", "nosuchcan7")
    assert problem.startswith("SocketCAN channel nosuchcan7 does not exist") and "--interface virtual" in problem
