"""The `file` sink: a local outbox folder, one file per batch, written atomically.

A batch is acknowledged once its file is renamed into place and the folder is synced, so a crash
never leaves a half-written batch. The file name is the batch id, so a resend overwrites instead of
duplicating. With `decoded`, each line is one sample as JSON; otherwise the encoded payload is kept
with a `.meta.json` beside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import orjson

from agent.codec import codec_by_content
from agent.model import Batch
from agent.uplink.base import Sink, SinkError


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSink(Sink):
    name = "file"

    def __init__(self, outbox: str | Path, *, decoded: bool = True, fail_rate: float = 0.0,
                 ack_delay_ms: int = 0, seed: int | None = None, delivery_log: str | Path | None = None) -> None:
        self.outbox = Path(outbox)
        self.decoded = decoded
        self.files_written = 0
        # Fault injection (sink.fault, testing/diagnostics): a slow or unreliable uplink, on demand.
        self.fail_rate = fail_rate
        self.ack_delay_s = ack_delay_ms / 1000
        self.rng = random.Random(seed)
        self.delivery_log = Path(delivery_log) if delivery_log else None
        self.injected_failures = 0

    async def open(self) -> None:
        try:
            self.outbox.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create outbox {self.outbox}: {exc.strerror}") from None

    async def send(self, batch: Batch) -> None:
        if self.ack_delay_s:
            await asyncio.sleep(self.ack_delay_s)
        if self.fail_rate and self.rng.random() < self.fail_rate:
            self.injected_failures += 1
            raise SinkError("injected failure (sink.fault.fail_rate)")
        try:
            await asyncio.to_thread(self._write, batch)
        except OSError as exc:
            raise SinkError(f"cannot write to outbox {self.outbox}: {exc.strerror}") from None
        self.files_written += 1

    def _log_delivery(self, batch: Batch) -> None:
        """Append-only record of every acknowledged send, written (and synced) before the ack returns."""
        line = orjson.dumps({"id": batch.id, "priority": batch.priority.name, "samples": batch.sample_count,
                             "sha256": hashlib.sha256(batch.payload).hexdigest()}) + b"\n"
        fd = os.open(self.delivery_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write(self, batch: Batch) -> None:
        if self.decoded:
            _, samples = codec_by_content(batch.content_type).decode(batch.payload)
            marker = {"simulated": True} if batch.simulated else {}
            lines = b"".join(
                orjson.dumps({"t": s.t, "bus": s.bus, "message": s.message, "signal": s.signal, "value": s.value,
                              "batch": batch.id, **marker}) + b"\n"
                for s in sorted(samples, key=lambda s: s.t))
            _write_atomic(self.outbox / f"{batch.id}.jsonl", lines)
        else:
            meta = {"id": batch.id, "priority": batch.priority.name, "encoding": batch.encoding,
                    "content_type": batch.content_type, "content_encoding": batch.content_encoding,
                    "sample_count": batch.sample_count, "first_t": batch.first_t, "last_t": batch.last_t,
                    "vehicle": batch.vehicle, "buses": list(batch.buses), "simulated": batch.simulated}
            _write_atomic(self.outbox / f"{batch.id}.{batch.encoding}", batch.payload)
            _write_atomic(self.outbox / f"{batch.id}.meta.json", orjson.dumps(meta))
        _sync_dir(self.outbox)
        if self.delivery_log is not None:
            self._log_delivery(batch)

    def state(self) -> dict[str, Any]:
        st: dict[str, Any] = {"outbox": str(self.outbox), "files_written": self.files_written}
        if self.fail_rate or self.ack_delay_s:
            st["injected_failures"] = self.injected_failures
        return st
