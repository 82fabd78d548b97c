"""Real SocketCAN: the agent as its own process on vcan interfaces (marker `vcan`).

Runs where the kernel has vcan (the tests create vcan0/vcan1 when root, or use existing ones), and
on a kernel without CAN inside the qemu VM of tools/vcan-tests.sh (what .ci/run does). Python in
that VM is 15-40x slower, so each test proves what only real SocketCAN can: AF_CAN sockets, kernel
receive filters that follow the config, CAN FD, interfaces going away and coming back, error
frames, receive-queue drops.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import cantools
import pytest
import yaml

from agent.can.bus_health import CAN_ERR_BUSOFF, CAN_ERR_CNT, CAN_ERR_CRTL, CAN_ERR_RESTARTED
from agent.can.frame_format import CAN_ERR_FLAG, pack_frame
from agent.can.logformats import LogFrame, read_log
from agent.can.rawcan import CAN_RAW_FD_FRAMES, SOL_CAN_RAW
from agent.can.source import socketcan_available
from agent.health import STATUS_FILE
from agent.twin.local import read_reported, write_desired
from tests.https_server import HttpsServer

pytestmark = pytest.mark.vcan

ROOT = Path(__file__).resolve().parent.parent
DBC = ROOT / "config" / "dbc"
IN_VM = os.environ.get("VEHICLE_AGENT_VCAN_VM") == "1"
SLOW = 6 if IN_VM else 1  # timeouts scale with the VM's speed


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _ensure_vcan(name: str) -> None:
    if not hasattr(socket, "AF_CAN"):
        pytest.skip("this Python has no AF_CAN")
    if not Path(f"/sys/class/net/{name}").exists():
        if os.geteuid() != 0:
            pytest.skip(f"{name} does not exist and creating it needs root (sudo modprobe vcan; "
                        f"sudo ip link add dev {name} type vcan; sudo ip link set up {name})")
        try:
            _ip("link", "add", "dev", name, "type", "vcan")
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            pytest.skip(f"cannot create {name}: {getattr(exc, 'stderr', exc)!r} (no vcan in this kernel; "
                        "tools/vcan-tests.sh runs these tests in a VM)")
    if not socketcan_available(name):
        if os.geteuid() == 0:
            _ip("link", "set", "up", name)
        if not socketcan_available(name):
            pytest.skip(f"SocketCAN is not usable on {name} here")


@pytest.fixture
def vcan0() -> str:
    _ensure_vcan("vcan0")
    return "vcan0"


@pytest.fixture
def vcan1() -> str:
    _ensure_vcan("vcan1")
    return "vcan1"


class Sender:
    """A raw CAN socket that writes frames like any ECU on the bus."""

    def __init__(self, channel: str) -> None:
        self.sock = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
        self.sock.setsockopt(SOL_CAN_RAW, CAN_RAW_FD_FRAMES, 1)
        self.sock.bind((channel,))

    def send(self, frame_id: int, data: bytes, *, fd: bool = False) -> None:
        for _ in range(200):
            try:
                self.sock.send(pack_frame(frame_id, data, fd=fd))
                return
            except OSError as exc:  # ENOBUFS: the interface's tx queue is full for a moment
                if exc.errno != 105:
                    raise
                time.sleep(0.005)
        raise TimeoutError("tx queue stayed full")

    def send_all(self, frames: list[tuple[int, bytes, bool]], *, burst: int = 50) -> None:
        for i, (fid, data, fd) in enumerate(frames):
            self.send(fid, data, fd=fd)
            if i % burst == burst - 1:
                time.sleep(0.02)

    def close(self) -> None:
        self.sock.close()


class AgentProcess:
    """`vehicle-agent run` on a config, with its status file and its JSON logs."""

    def __init__(self, tmp: Path, cfg: dict) -> None:
        self.state = tmp / "state"
        self.path = tmp / "agent.yaml"
        self.cfg = {"vehicle_id": "vcan-test", "state_dir": str(self.state), "batching": {"max_age_s": 1},
                    "sink": {"type": "file", "path": "outbox"}, **cfg}
        self.path.write_text(yaml.safe_dump(self.cfg))
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(self.path), "--no-progress"],
                                     cwd=ROOT, env={**os.environ, "VEHICLE_AGENT_LOG_FORMAT": "json"},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = ""

    def status(self) -> dict:
        try:
            return json.loads((self.state / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def bus(self, name: str) -> dict:
        return self.status().get("buses", {}).get(name, {})

    def wait(self, check: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the agent exited: {self.proc.stderr.read()[-3000:] if self.proc.stderr else ''}"
            if check():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; status: {json.dumps(self.status().get('buses'))}")

    def reload(self, cfg: dict) -> None:
        version = self.status()["agent"]["config_version"]
        self.cfg = {**self.cfg, **cfg}
        self.path.write_text(yaml.safe_dump(self.cfg))
        self.proc.send_signal(signal.SIGHUP)
        self.wait(lambda: self.status().get("agent", {}).get("config_version") == version + 1, "the reloaded config")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        _, self.log = self.proc.communicate(timeout=60 * SLOW)

    def events(self, name: str) -> list[dict]:
        return [e for e in (json.loads(x) for x in self.log.splitlines() if x.startswith("{")) if e.get("event") == name]

    def samples(self) -> list[dict]:
        return [json.loads(line) for f in sorted((self.state / "outbox").glob("*.jsonl")) for line in f.read_text().splitlines()]


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[[dict], AgentProcess]]:
    started: list[AgentProcess] = []

    def start(cfg: dict) -> AgentProcess:
        a = AgentProcess(tmp_path, cfg)
        started.append(a)
        return a

    yield start
    for a in started:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()


def _drive(seconds: float) -> list[LogFrame]:
    frames = [f for f in read_log(ROOT / "config" / "sample-drive.log") if isinstance(f, LogFrame)]
    return [f for f in frames if f.t - frames[0].t < seconds]


def test_two_buses_fd_kernel_filters_and_values_match_a_replay(vcan0: str, vcan1: str, agents, tmp_path: Path) -> None:
    """Frames on vcan decode to exactly what the same frames decode to from a candump log."""
    pt_db = cantools.database.load_file(str(DBC / "powertrain.dbc"))
    ch_db = cantools.database.load_file(str(DBC / "chassis.dbc"))
    agent = agents({
        "buses": [{"name": "pt", "interface": "socketcan", "channel": vcan0, "databases": [str(DBC / "powertrain.dbc")]},
                  {"name": "ch", "interface": "socketcan", "channel": vcan1, "fd": True,
                   "databases": [str(DBC / "chassis.dbc")]}],
        "collection": {"default": {"policy": "all"},
                       "signals": [{"match": "TransmissionStatus.*", "policy": "exclude"}]}})
    agent.wait(lambda: agent.bus("pt").get("state") == "up" and agent.bus("ch").get("state") == "up", "both buses up")
    pt, ch = Sender(vcan0), Sender(vcan1)
    try:
        drive = _drive(1.0 if IN_VM else 5.0)
        excluded = pt_db.get_message_by_name("TransmissionStatus").frame_id
        wanted = [f for f in drive if f.id != excluded]
        pt.send_all([(f.id, f.data, f.is_fd) for f in drive] + [(0x7AB, bytes(8), False)] * 20)
        adas = ch_db.get_message_by_name("AdasObjectList")
        wheels = ch_db.get_message_by_name("WheelSpeeds")
        fd_frames = [(adas.frame_id, bytes((i * 7 + k) % 256 for k in range(64)), True) for i in range(20)]
        classic = [(wheels.frame_id, bytes([i, 1, i, 2, i, 3, i, 4]), False) for i in range(20)]
        ch.send_all(fd_frames + classic)
        agent.wait(lambda: agent.bus("pt").get("frames") == len(wanted) and agent.bus("ch").get("frames") == 40,
                   "every wanted frame")
        pt_status = agent.bus("pt")
        assert pt_status["unknown_ids"] == 0 and pt_status["filtered"] == 0, \
            "the kernel filter dropped unknown ids and the excluded message before the agent saw them"

        # A live config change moves the kernel filter: now only EngineData passes.
        engine = pt_db.get_message_by_name("EngineData")
        agent.reload({"collection": {"default": {"policy": "exclude"},
                                     "signals": [{"match": "EngineData.*", "policy": "all"}]}})
        before = agent.bus("pt")["frames"]
        others = [f for f in wanted if f.id != engine.frame_id][:100]
        pt.send_all([(f.id, f.data, f.is_fd) for f in others] + [(engine.frame_id, bytes(8), False)] * 5)
        agent.wait(lambda: agent.bus("pt")["frames"] == before + 5, "only EngineData frames after the change")
        assert agent.bus("pt")["filtered"] == 0
    finally:
        pt.close()
        ch.close()
        agent.stop()
    assert agent.proc.returncode == 0, agent.log[-3000:]

    got = Counter((s["message"], s["signal"], round(s["value"], 6)) for s in agent.samples() if s["bus"] == "pt"
                  and s["message"] != "EngineData")
    log = tmp_path / "sent.log"
    log.write_text("".join(f"({f.t:.6f}) {vcan0} {f.id:03X}#{f.data.hex().upper()}\n" for f in wanted))
    res = subprocess.run([sys.executable, "-m", "agent", "decode", "--dbc", str(DBC / "powertrain.dbc"), str(log)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120 * SLOW)
    expected = Counter((m["message"], sig, round(v, 6)) for m in map(json.loads, res.stdout.splitlines())
                       for sig, v in m["signals"].items() if m["message"] != "EngineData")
    assert got == expected
    fd_got = Counter((s["signal"], round(s["value"], 6)) for s in agent.samples()
                     if s["bus"] == "ch" and s["message"] == "AdasObjectList")
    fd_want = Counter((sig, round(v, 6)) for _, data, _ in fd_frames
                      for sig, v in adas.decode(data, decode_choices=False).items())
    assert fd_got == fd_want, "64-byte CAN FD frames were received and decoded exactly"


def test_interface_down_deleted_recreated_and_error_frames(vcan0: str, agents) -> None:
    if os.geteuid() != 0:
        pytest.skip("setting interfaces down and deleting them needs root")
    db = cantools.database.load_file(str(DBC / "powertrain.dbc"))
    engine = db.get_message_by_name("EngineData").frame_id
    agent = agents({"buses": [{"name": "pt", "interface": "socketcan", "channel": vcan0,
                               "databases": [str(DBC / "powertrain.dbc")]}]})
    agent.wait(lambda: agent.bus("pt").get("state") == "up", "bus up")
    sender = Sender(vcan0)
    sender.send_all([(engine, bytes([i] * 8), False) for i in range(10)])
    sender.close()
    agent.wait(lambda: agent.bus("pt").get("frames") == 10, "frames before the outage")

    _ip("link", "set", "down", vcan0)
    agent.wait(lambda: agent.bus("pt").get("state") == "down", "bus reported down")
    _ip("link", "del", vcan0)
    agent.wait(lambda: agent.bus("pt").get("state") == "missing", "a deleted interface shown missing")
    assert "does not exist" in agent.bus("pt")["last_error"]
    _ip("link", "add", "dev", vcan0, "type", "vcan")
    _ip("link", "set", "up", vcan0)
    agent.wait(lambda: agent.bus("pt").get("state") == "up", "bus back up without a restart", timeout=40)

    sender = Sender(vcan0)
    try:
        sender.send_all([(engine, bytes([i + 1] * 8), False) for i in range(10)])
        agent.wait(lambda: agent.bus("pt").get("frames") == 20, "frames after the outage")
        sender.send(CAN_ERR_FLAG | CAN_ERR_CRTL | CAN_ERR_CNT, bytes([0, 0x20, 0, 0, 0, 0, 135, 2]))
        agent.wait(lambda: agent.bus("pt").get("controller") == "error_passive"
                   and agent.bus("pt").get("tx_error_counter") == 135, "error passive and its counters shown")
        sender.send(CAN_ERR_FLAG | CAN_ERR_BUSOFF, bytes(8))
        agent.wait(lambda: agent.bus("pt").get("error_frames") == 2 and agent.bus("pt").get("state") == "bus_off",
                   "bus-off error frame counted and shown")
        sender.send(CAN_ERR_FLAG | CAN_ERR_RESTARTED, bytes(8))
        agent.wait(lambda: agent.bus("pt").get("error_frames") == 3 and agent.bus("pt").get("state") == "up"
                   and agent.bus("pt").get("controller") == "error_active", "controller restart shown")
        assert {k: n for k, n in agent.bus("pt")["errors"].items() if n} == {"controller": 1, "bus_off": 1, "restarted": 1}
        human = subprocess.run([sys.executable, "-m", "agent", "status", "--state-dir", str(agent.state)],
                               capture_output=True, text=True, check=True).stdout
        assert "controller error_active (TX 0, RX 0), errors: bus_off 1, controller 1, restarted 1" in human
    finally:
        sender.close()
        agent.stop()
    assert agent.proc.returncode == 0
    assert agent.events("bus_open_failed") and len(agent.events("bus_open")) >= 2
    assert [e["channel"] for e in agent.events("can_interface_missing")] == [vcan0]


def test_auto_waits_for_a_missing_interface_and_picks_it_up(agents) -> None:
    """`interface: auto` that may not simulate (simulate: false here; any cloud sink likewise) waits for
    its channel: `missing` until it is created, then read like any SocketCAN bus, nothing simulated."""
    if os.geteuid() != 0 or not hasattr(socket, "AF_CAN"):
        pytest.skip("creating interfaces needs root and AF_CAN")
    name = "vcan7"
    if Path(f"/sys/class/net/{name}").exists():
        _ip("link", "del", name)
    db = cantools.database.load_file(str(DBC / "powertrain.dbc"))
    engine = db.get_message_by_name("EngineData").frame_id
    agent = agents({"buses": [{"name": "pt", "interface": "auto", "channel": name, "simulate": False,
                               "databases": [str(DBC / "powertrain.dbc")]}]})
    try:
        agent.wait(lambda: agent.bus("pt").get("state") == "missing", "bus shown missing")
        _ip("link", "add", "dev", name, "type", "vcan")
        _ip("link", "set", "up", name)
        agent.wait(lambda: agent.bus("pt").get("state") == "up", "the new interface picked up")
        sender = Sender(name)
        sender.send_all([(engine, bytes([i] * 8), False) for i in range(10)])
        sender.close()
        agent.wait(lambda: agent.bus("pt").get("frames") == 10, "its frames read")
        assert agent.bus("pt")["simulated"] is False
    finally:
        agent.stop()
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)
    assert agent.proc.returncode == 0
    assert len(agent.events("can_interface_missing")) == 1 and not agent.events("simulated_data")
    assert agent.samples() and not any("simulated" in s for s in agent.samples())


def test_kernel_receive_queue_drops_are_reported(vcan0: str, agents) -> None:
    """A frozen agent (SIGSTOP) cannot drain its socket: the kernel drops, and the agent says how many."""
    db = cantools.database.load_file(str(DBC / "powertrain.dbc"))
    engine = db.get_message_by_name("EngineData").frame_id
    agent = agents({"buses": [{"name": "pt", "interface": "socketcan", "channel": vcan0,
                               "databases": [str(DBC / "powertrain.dbc")]}]})
    agent.wait(lambda: agent.bus("pt").get("state") == "up", "bus up")
    rcvbuf = agent.bus("pt")["rcvbuf_bytes"]
    sent = max(20000, rcvbuf // 100)  # far more than the socket buffer holds (several hundred bytes a frame)
    sender = Sender(vcan0)
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(sent):
            sender.send(engine, i.to_bytes(8, "little"))
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    try:
        # The kernel tells a socket its drop count with the next frame it queues, so traffic goes on.
        agent.wait(lambda: agent.bus("pt")["frames"] > 0, "the backlog drained")
        time.sleep(1)
        for i in range(10):
            sender.send(engine, bytes([i] * 8))
        sent += 10
    finally:
        sender.close()
    agent.wait(lambda: agent.bus("pt").get("kernel_drops", 0) > 0, "kernel drops reported", timeout=30)
    agent.wait(lambda: agent.bus("pt")["frames"] + agent.bus("pt")["kernel_drops"] == sent,
               "every frame either received or counted as dropped", timeout=30)
    agent.stop()
    assert agent.events("can_kernel_drops")


@pytest.mark.skipif(IN_VM, reason="sustained load needs native vcan (Python in the VM is 15-40x slower)")
def test_sustained_saturated_bus_loses_nothing(vcan0: str, agents) -> None:
    """8,000 frames/s (a saturated 1 Mbit/s bus) for 60 s: zero frames lost."""
    seconds = float(os.environ.get("VEHICLE_AGENT_SOAK_S", "60"))
    db = cantools.database.load_file(str(DBC / "powertrain.dbc"))
    ids = [m.frame_id for m in db.messages if m.length <= 8]
    agent = agents({"buses": [{"name": "pt", "interface": "socketcan", "channel": vcan0,
                               "databases": [str(DBC / "powertrain.dbc")]}],
                    "collection": {"default": {"policy": "on_change"}}})
    agent.wait(lambda: agent.bus("pt").get("state") == "up", "bus up")
    sender = Sender(vcan0)
    sent, start = 0, time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            for _ in range(80):
                sender.send(ids[sent % len(ids)], (sent // len(ids)).to_bytes(8, "little"))
                sent += 1
            delay = start + sent / 8000 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        sender.close()
    agent.wait(lambda: agent.bus("pt")["frames"] == sent, f"all {sent} frames", timeout=30)
    assert agent.bus("pt").get("kernel_drops", 0) == 0
    agent.stop()


def test_simulator_traffic_decodes_like_its_candump_capture(vcan0: str, agents, tmp_path: Path) -> None:
    """`vehicle-agent simulate` on vcan0 while can-utils' candump records it: the agent's samples are
    exactly what `vehicle-agent decode` makes of the capture."""
    import shutil

    if shutil.which("candump") is None:
        pytest.skip("can-utils (candump) is not installed")
    dbc = str(DBC / "powertrain.dbc")
    agent = agents({"buses": [{"name": "pt", "interface": "socketcan", "channel": vcan0, "databases": [dbc]}],
                    "collection": {"default": {"policy": "all"}}})
    agent.wait(lambda: agent.bus("pt").get("state") == "up", "bus up")
    capture = tmp_path / "capture.log"
    with capture.open("w") as out:
        candump = subprocess.Popen(["candump", "-L", vcan0], stdout=out)
    try:
        time.sleep(0.5)
        sim = subprocess.run([sys.executable, "-m", "agent", "simulate", "--dbc", dbc, "--channel", vcan0,
                              "--interface", "socketcan", "--duration", "1", "--seed", "3"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120 * SLOW)
        assert sim.returncode == 0, sim.stderr[-2000:]
        time.sleep(0.5)
    finally:
        candump.send_signal(signal.SIGINT)
        candump.wait(30)
    lines = capture.read_text().splitlines()
    assert len(lines) > 100
    agent.wait(lambda: agent.bus("pt").get("frames") == len(lines), f"all {len(lines)} captured frames")
    agent.stop()
    got = Counter((s["message"], s["signal"], round(s["value"], 6)) for s in agent.samples())
    res = subprocess.run([sys.executable, "-m", "agent", "decode", "--dbc", dbc, str(capture)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120 * SLOW)
    expected = Counter((m["message"], sig, round(v, 6)) for m in map(json.loads, res.stdout.splitlines())
                       for sig, v in m["signals"].items())
    assert got == expected and sum(got.values()) > 100


def test_a_remote_database_for_another_ecu_release_rolls_back_through_the_kernel_filter(
        vcan0: str, agents, tmp_path: Path) -> None:
    """Remote databases on real SocketCAN (docs/remote-databases.md): a version that moves EngineData
    to another id would never show as unknown ids if the kernel filter passed only the new files'
    ids; during the watch it also passes the ids the previous files knew, so the frames arrive, count
    as unknown, and the version is rolled back; the local file decodes them again afterwards."""
    edge = (ROOT / "tests" / "data" / "edge.dbc").read_text()
    engine = cantools.database.load_string(edge).get_message_by_name("EngineData").frame_id
    wrong = edge.replace(f"BO_ {engine} ", f"BO_ {engine + 1} ").replace(f"VAL_ {engine} ", f"VAL_ {engine + 1} ")
    assert cantools.database.load_string(wrong).get_message_by_name("EngineData").frame_id == engine + 1
    (tmp_path / "dbs").mkdir()
    (tmp_path / "dbs" / "edge.dbc").write_text(edge)
    with HttpsServer(tmp_path / "tls") as server:
        server.put("/wrong/edge.dbc", wrong.encode())
        agent = agents({"databases_dir": "dbs", "collection": {"default": {"policy": "all"}},
                        "buses": [{"name": "pt", "interface": "socketcan", "channel": vcan0,
                                   "databases": ["dbs/edge.dbc"]}],
                        "remote_databases": {"ca_file": str(server.ca_file), "timeout_s": 30 * SLOW,
                                             "parse_timeout_s": 120 * SLOW, "watch_max_s": 3600,
                                             "watch_frames": 10_000}})
        sender = Sender(vcan0)
        try:
            agent.wait(lambda: agent.bus("pt").get("state") == "up", "the bus up")
            local_filter = agent.bus("pt")["filter_ids"]
            sender.send_all([(engine, bytes(8), False)] * 60)
            agent.wait(lambda: agent.bus("pt").get("frames") == 60, "the local file's frames read")
            write_desired(agent.state, {"$version": 2, "databases": {"version": "wrong", "files": [
                {"name": "edge.dbc", "url": server.url("/wrong/edge.dbc?sig=secret"),
                 "sha256": hashlib.sha256(wrong.encode()).hexdigest(), "size": len(wrong.encode())}]}})
            agent.wait(lambda: agent.status().get("databases", {}).get("watching") is True, "the version on probation",
                       timeout=120)
            assert agent.bus("pt")["filter_ids"] == local_filter + 1, "the new id and the one it dropped"
            sender.send_all([(engine, bytes(8), False)] * 60)
            agent.wait(lambda: agent.status()["databases"]["rollbacks"] == 1, "the rollback")
            assert agent.bus("pt")["unknown_ids"] >= 50, "the dropped id's frames reached the agent, as unknown"
            assert agent.bus("pt")["filter_ids"] == local_filter
            sender.send_all([(engine, bytes(8), False)] * 10)
            agent.wait(lambda: agent.bus("pt").get("frames") == 130, "decoded by the local file again")
            agent.wait(lambda: (read_reported(agent.state).get("databases") or {}).get("ac") == 400, "the ack")
            ack = read_reported(agent.state)["databases"]
        finally:
            sender.close()
            agent.stop()
    assert agent.proc.returncode == 0, agent.log[-3000:]
    assert ack["ac"] == 400 and ack["ad"].startswith("version wrong rolled back: bus pt: unknown ids"), ack
    assert 50 <= agent.bus("pt")["unknown_ids"] <= 60, "the frames after the rollback decode again"
