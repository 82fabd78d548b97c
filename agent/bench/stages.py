"""Per-stage costs on a trace: cantools' bare decode (the yardstick), our decode, the whole pipeline
after the bus read split into collect / encode+compress / store, and the pipeline with the bus read.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import can

from agent.bench.trace import Trace, cpu_best
from agent.can.frame_format import pack_frame
from agent.can.rawcan import RCVBUF_BYTES, RawCanSource, enable_timestamps
from agent.can.source import BusSource
from agent.codec import Codec, Columns, Scaling
from agent.collect.collector import Collector
from agent.config import AgentConfig
from agent.decode.fast import FastDecoder
from agent.model import Batch, Sample
from agent.pipeline import build, codec_of
from agent.store import Store


def stage(cpu_s: float, frames: int, **extra: float) -> dict[str, float]:
    us = cpu_s / frames * 1e6
    return {"frames_per_s": round(frames / cpu_s), "us_per_frame": round(us, 3), **extra}


def cantools_decode(trace: Trace, budget_s: float) -> dict[str, float]:
    """cantools' `Database.decode_message` on every frame: the cost every ratio is measured against."""
    jobs = [(trace.databases[bus].decode_message, frames) for bus, frames in trace.frames.items()]

    def run() -> None:
        for decode, frames in jobs:
            for f in frames:
                with contextlib.suppress(Exception):
                    decode(f.id, f.data, decode_choices=False)

    return stage(cpu_best(run, repeats=3, budget_s=budget_s), trace.count)


def fast_decode(trace: Trace, budget_s: float) -> dict[str, float]:
    """Our compiled decoders, every signal of every frame (no policy): decode alone."""
    jobs = []
    for bus, frames in trace.frames.items():
        decoders = {m.frame_id: FastDecoder(m, [s.name for s in m.signals]).decode
                    for m in trace.databases[bus].messages}
        jobs.append((decoders, frames))

    def run() -> None:
        for decoders, frames in jobs:
            get = decoders.get
            for _t, fid, data, _fd, _err in frames:
                decode = get(fid)
                if decode is not None:
                    decode(data)

    return stage(cpu_best(run, repeats=3, budget_s=budget_s), trace.count)


class _TimedCodec(Codec):
    """Adds up the CPU time the wrapped codec spends encoding and compressing."""

    def __init__(self, inner: Codec) -> None:
        self.inner, self.cpu_s = inner, 0.0
        self.name, self.content_type, self.content_encoding = inner.name, inner.content_type, inner.content_encoding

    def encode(self, columns: Columns, *, vehicle: str, scaling: Scaling | None = None,
               simulated: bool = False, event: Mapping[str, Any] | None = None) -> bytes:
        start = time.process_time()
        try:
            return self.inner.encode(columns, vehicle=vehicle, scaling=scaling, simulated=simulated, event=event)
        finally:
            self.cpu_s += time.process_time() - start

    def decode(self, payload: bytes) -> tuple[dict, list[Sample]]:
        return self.inner.decode(payload)

    def carries_column(self, key: tuple[str, str, str], values: list, scaling: Scaling | None) -> bool:
        return self.inner.carries_column(key, values, scaling)


class TimedPipeline:
    """The agent's pipeline after the bus read: collectors -> batcher (encode+compress) -> SQLite store."""

    def __init__(self, cfg: AgentConfig, directory: Path) -> None:
        self.codec = _TimedCodec(codec_of(cfg))
        self.store = Store(directory / "bench-store.db", max_bytes=1 << 34, synchronous=cfg.store.synchronous)
        self.store_cpu_s = 0.0
        self.batches: list[Batch] = []
        self.pipeline = build(cfg, on_batch=self._put, codec=self.codec)  # as the agent builds it
        self.batcher = self.pipeline.batcher
        self.collectors: dict[str, Collector] = self.pipeline.collectors
        self.campaigns = self.pipeline.campaigns
        for collector in self.collectors.values():
            collector.build_all()  # compiled per config, not per frame: outside the timed runs

    def _put(self, batch: Batch) -> None:
        start = time.process_time()
        self.store.put(batch)
        self.store_cpu_s += time.process_time() - start
        self.batches.append(batch)

    @property
    def samples(self) -> int:
        return self.pipeline.samples

    def close(self) -> None:
        self.store.close()


def pipeline(trace: Trace, directory: Path, budget_s: float) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The whole pipeline after the bus read, and its split into collect / encode / store (best run)."""
    chunks = trace.chunks()
    best: tuple[float, TimedPipeline] | None = None
    deadline = time.monotonic() + budget_s
    for i in range(3):
        run_dir = Path(tempfile.mkdtemp(dir=directory))
        p = TimedPipeline(trace.config, run_dir)
        collectors = p.collectors
        start = time.process_time()
        for bus, frames in chunks:
            collectors[bus].process(frames)
        for c in collectors.values():
            c.flush()
        p.batcher.flush()
        cpu = time.process_time() - start
        p.close()
        if best is None or cpu < best[0]:
            best = (cpu, p)
        if i >= 1 and time.monotonic() > deadline:
            break
    assert best is not None
    cpu, p = best
    n, samples = trace.count, p.samples
    wire = sum(len(b.payload) for b in p.batches)
    encode, store = p.codec.cpu_s, p.store_cpu_s
    stages = {
        "collect": stage(cpu - encode - store, n, what="decode + collection policy (the collector)"),  # type: ignore[arg-type]
        "encode": stage(encode, n, us_per_sample=round(encode / max(samples, 1) * 1e6, 3),
                        what=f"{p.codec.name} encode + compress"),  # type: ignore[arg-type]
        "store": stage(store, n, batches=len(p.batches), what="SQLite commit of each batch"),  # type: ignore[arg-type]
    }
    result = stage(cpu, n, samples_per_frame=round(samples / n, 3), samples=samples,
                   wire_bytes_per_sample=round(wire / max(samples, 1), 3))
    return result, stages


@contextlib.contextmanager
def sender_socket(datagrams: list[bytes], rate: float, seconds: float) -> Iterator[socket.socket]:
    """The receiving end of a socketpair fed by a sender process (see agent.bench.sender)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
    enable_timestamps(ours)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF_BYTES)
    ours.setblocking(False)
    with tempfile.NamedTemporaryFile(prefix="bench-frames-") as f:
        f.write(b"".join(bytes([len(d)]) + d for d in datagrams))
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "agent.bench.sender", str(theirs.fileno()), f.name,
                                 str(rate), str(seconds)], pass_fds=[theirs.fileno()])
        theirs.close()
        try:
            yield ours
        finally:
            proc.kill()
            proc.wait()
            ours.close()


def with_socket_read(trace: Trace, directory: Path) -> dict[str, float]:
    """The SocketCAN path: a non-blocking `recvmsg` drain (kernel timestamps) in front of the pipeline.

    Where the kernel has no CAN, the datagrams come over an AF_UNIX socketpair from a sender
    process: the same `struct can_frame` bytes and the same Python-side work as on AF_CAN.
    """
    p = TimedPipeline(trace.config, directory)
    cpu, received, sent = 0.0, 0, 0
    for bus in trace.frames:
        grams = [pack_frame(f.id, f.data, fd=f.is_fd) for f in trace.frames[bus]]
        sent += len(grams)
        process, got = p.collectors[bus].process, 0
        with sender_socket(grams, 0, 0) as sock:
            read = RawCanSource(bus, "bench", sock=sock).read  # the agent's drain (recvmmsg where libc has it)
            start = time.process_time()
            deadline = time.monotonic() + 60
            while got < len(grams) and time.monotonic() < deadline:
                out = read()
                if out:
                    got += len(out)
                    process(out)
                else:
                    select.select([sock], [], [], 0.05)
            cpu += time.process_time() - start
        received += got
    start = time.process_time()
    p.batcher.flush()
    cpu += time.process_time() - start
    p.close()
    return stage(cpu, received, sent=sent, lost=sent - received)



def with_python_can_read(trace: Trace, directory: Path) -> dict[str, float]:
    """python-can's `Bus.recv` path (the virtual bus; frames queued beforehand, sending not counted)."""
    p = TimedPipeline(trace.config, directory)
    cpu = 0.0
    rx = can.Bus(interface="virtual", channel="bench-read", receive_own_messages=False)
    tx = can.Bus(interface="virtual", channel="bench-read", receive_own_messages=False)
    source = BusSource("bench", "virtual", "bench-read")
    try:
        for bus, frames in trace.frames.items():
            process = p.collectors[bus].process
            for i in range(0, len(frames), 5000):
                for f in frames[i:i + 5000]:
                    tx.send(can.Message(timestamp=f.t, arbitration_id=f.id, data=f.data, is_fd=f.is_fd,
                                        is_extended_id=f.id > 0x7FF, check=False))
                start = time.process_time()
                while batch := source.drain(rx):  # the source's own drain, without its tick
                    process(batch)
                cpu += time.process_time() - start
        start = time.process_time()
        p.batcher.flush()
        cpu += time.process_time() - start
    finally:
        rx.shutdown()
        tx.shutdown()
        p.close()
    return stage(cpu, trace.count)
