"""The local control channel: the same desired/reported/methods as the cloud, without a broker.

For the file sink (and for tests, and for a technician on the unit):

    <state_dir>/control/desired.json    written by you: a whole desired document with "$version"
    <state_dir>/control/reported.json   written by the agent: acks and state (as the MQTT reported doc)
    <state_dir>/control/agent.sock      a unix socket: one JSON line {"method": ..., "payload": ...}
                                        in, one JSON line {"status": ..., "payload": ...} out

The desired file is read at start and whenever it changes (polled every half second); it goes
through the same guard and per-property apply as a twin. `call_method` and `write_desired` are the
client side (used by tests and `vehicle-agent` subcommands).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import structlog

from agent.config import deep_merge
from agent.twin import guard
from agent.twin.control import ControlChannel, ControlPlane

log = structlog.get_logger()

CONTROL_DIR = "control"
DESIRED = "desired.json"
REPORTED = "reported.json"
SOCKET = "agent.sock"
POLL_S = 0.5
SOCKET_PATH_MAX = 107  # sun_path
REQUEST_MAX = guard.MAX_METHOD_BYTES + 512  # a request line: the method's name and its payload


def control_dir(state_dir: Path) -> Path:
    return Path(state_dir) / CONTROL_DIR


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file; a FIFO or device is refused without blocking on it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"not a regular file: {path.name}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit)
    finally:
        os.close(fd)


def write_desired(state_dir: Path, doc: dict[str, Any]) -> None:
    """Put a desired document where a running agent picks it up (atomically)."""
    folder = control_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / DESIRED, json.dumps(doc).encode())


def read_reported(state_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((control_dir(state_dir) / REPORTED).read_bytes())
    except (FileNotFoundError, ValueError):
        return {}


def call_method(state_dir: Path, name: str, payload: Any = None, *, timeout: float = 10.0) -> tuple[int, Any]:
    """Call a method on the agent running with this state dir; (status, answer). OSError if none runs."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(control_dir(state_dir) / SOCKET))
        sock.sendall(json.dumps({"method": name, "payload": payload}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    return answer["status"], answer["payload"]


class LocalChannel(ControlChannel):
    name = "local"

    def __init__(self, state_dir: Path) -> None:
        self.folder = control_dir(state_dir)
        self.reported: dict[str, Any] = {}
        self.desired_reads = 0
        self.socket_error: str | None = None
        self._seen: tuple[int, int, int] | None = None

    def _signature(self, path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    async def serve(self, plane: ControlPlane, stop: asyncio.Event) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        server = await self._start_socket(plane)
        first = True
        try:
            while not stop.is_set():
                plane.beat()
                self._check_desired(plane, first)
                first = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_S)
        finally:
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await server.wait_closed()
                with contextlib.suppress(OSError):
                    (self.folder / SOCKET).unlink()

    def _check_desired(self, plane: ControlPlane, first: bool) -> None:
        path = self.folder / DESIRED
        sig = self._signature(path)
        if sig is None or sig == self._seen:
            return
        self._seen = sig
        try:
            data = read_regular(path, guard.MAX_DESIRED_BYTES + 1)  # never more than the limit
        except OSError as exc:
            log.warning("desired_file_unreadable", file=str(path), error=exc.strerror or str(exc))
            return
        self.desired_reads += 1
        acks = plane.desired_document(data, full=True, at_connect=first)
        self._report({**acks, "$desired": dict(plane.desired.document), "control": plane.state()})

    def _report(self, patch: dict[str, Any]) -> None:
        self.reported = deep_merge(self.reported, patch)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.folder / REPORTED, json.dumps(self.reported, default=str).encode())
        except OSError as exc:
            log.warning("reported_file_not_written", file=str(self.folder / REPORTED), error=exc.strerror)

    async def publish_reported(self, patch: dict[str, Any]) -> None:
        self._report(patch)

    async def _start_socket(self, plane: ControlPlane) -> asyncio.AbstractServer | None:
        path = self.folder / SOCKET
        if len(str(path)) > SOCKET_PATH_MAX:
            self.socket_error = "path too long for a unix socket"
            log.warning("control_socket_unavailable", path=str(path), error=self.socket_error)
            return None
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by an agent that did not stop cleanly

        async def serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                try:
                    line = await asyncio.wait_for(reader.readline(), 10)
                    status, answer = self._call(plane, line)
                except ValueError:  # the line is longer than the stream's limit
                    status, answer = 400, {"error": f"request refused: more than {REQUEST_MAX} bytes"}
                writer.write(json.dumps({"status": status, "payload": answer}, default=str).encode() + b"\n")
                await asyncio.wait_for(writer.drain(), 10)
            except (OSError, TimeoutError, ValueError) as exc:
                log.warning("control_socket_client_failed", error=str(exc) or type(exc).__name__)
            finally:
                writer.close()

        try:
            server = await asyncio.start_unix_server(serve_client, path=str(path), limit=REQUEST_MAX)
        except OSError as exc:
            self.socket_error = exc.strerror or type(exc).__name__
            log.warning("control_socket_unavailable", path=str(path), error=self.socket_error)
            return None
        os.chmod(path, 0o600)
        return server

    @staticmethod
    def _call(plane: ControlPlane, line: bytes) -> tuple[int, Any]:
        try:
            request = guard.parse(line, guard.Limits(REQUEST_MAX))
        except guard.Rejected as exc:
            return 400, {"error": f"request refused: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return 400, {"error": 'a request is {"method": NAME, "payload": ...}'}
        return plane.method(request["method"], request.get("payload"))

    def state(self) -> dict[str, Any]:
        return {"link": "local", "folder": str(self.folder), "desired_reads": self.desired_reads,
                "socket_error": self.socket_error}
