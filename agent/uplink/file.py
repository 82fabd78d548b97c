"""The `file` sink: a local outbox folder, one file per batch, written atomically.

A batch is acknowledged once its file is renamed into place and the folder is synced, so a crash
never leaves a half-written batch. The file name is the batch id, so a resend overwrites instead of
duplicating. With `decoded`, each line is one sample as JSON; otherwise the encoded payload is kept
with a `.meta.json` beside it.

The outbox is bounded (`sink.max_bytes`): nothing downstream deletes what it holds on a head unit,
and the quick start alone writes ~13 MB a minute. Past the bound the oldest batches' files go
(batch ids sort by creation time), counted in status.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import structlog

from agent.codec import codec_by_content, exact_json
from agent.durable import sync_dir
from agent.model import Batch
from agent.uplink.base import Sink, SinkError, UnsendableBatch

log = structlog.get_logger()

_FILE_PART = re.compile(r"[A-Za-z0-9_-]{1,128}")  # what a batch id and an encoding may be in a file name
BATCH_FILE = re.compile(r"^([0-9a-f]{32})\.")  # <batch id>.jsonl | .columnar | .json | .meta.json


def _write_atomic(path: Path, data: bytes | Iterable[bytes]) -> int:
    """Write `data` (bytes, or chunks written as they come) to `path` atomically; returns its size."""
    tmp = path.with_name(f".{path.name}.tmp")
    size = 0
    try:
        with open(tmp, "wb") as fh:
            for chunk in (data,) if isinstance(data, bytes) else data:
                size += fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return size


class FileSink(Sink):
    name = "file"

    def __init__(self, outbox: str | Path, *, decoded: bool = True, max_bytes: int | None = None) -> None:
        self.outbox = Path(outbox)
        self.decoded = decoded
        self.files_written = 0
        self.max_bytes = max_bytes
        self.batch_bytes: dict[str, int] = {}  # batch id -> bytes of its files in the outbox
        self.outbox_bytes = 0
        self.removed_batches = self.removed_bytes = 0

    async def open(self) -> None:
        try:
            self.outbox.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self._scan)
        except OSError as exc:
            raise SinkError(f"cannot create outbox {self.outbox}: {exc.strerror}") from None

    def _scan(self) -> None:
        """What an earlier run left in the outbox counts against the bound too."""
        self.batch_bytes.clear()
        for entry in os.scandir(self.outbox):
            m = BATCH_FILE.match(entry.name)
            if m and entry.is_file(follow_symlinks=False):
                self.batch_bytes[m[1]] = self.batch_bytes.get(m[1], 0) + entry.stat(follow_symlinks=False).st_size
        self.outbox_bytes = sum(self.batch_bytes.values())

    def _keep_within_bound(self, newest: str) -> None:
        """Remove the oldest batches' files until the outbox fits `max_bytes` (never the newest batch)."""
        if self.max_bytes is None or self.outbox_bytes <= self.max_bytes:
            return
        removed: list[str] = []
        for bid in sorted(self.batch_bytes):
            if self.outbox_bytes <= self.max_bytes or bid == newest:
                break
            for path in self.outbox.glob(f"{bid}.*"):
                path.unlink(missing_ok=True)
            size = self.batch_bytes.pop(bid)
            self.outbox_bytes -= size
            self.removed_batches += 1
            self.removed_bytes += size
            removed.append(bid)
        if removed:
            sync_dir(self.outbox)
            log.info("outbox_trimmed", removed_batches=len(removed), oldest_kept=min(self.batch_bytes, default=None),
                     outbox_bytes=self.outbox_bytes, max_bytes=self.max_bytes,
                     removed_total=self.removed_batches, reason="sink.max_bytes")

    async def send(self, batch: Batch) -> None:
        try:
            await asyncio.to_thread(self._write, batch)
        except OSError as exc:
            raise SinkError(f"cannot write to outbox {self.outbox}: {exc.strerror}") from None
        self.files_written += 1

    def _write(self, batch: Batch) -> None:
        if not (_FILE_PART.fullmatch(batch.id) and _FILE_PART.fullmatch(batch.encoding)):
            # they name the batch's files: a damaged store row must not write elsewhere, nor block the queue
            raise UnsendableBatch(f"batch id {batch.id!r:.80} or encoding {batch.encoding!r:.40} cannot name a file")
        if self.decoded:
            try:
                _, samples = codec_by_content(batch.content_type).decode(batch.payload)
            except Exception as exc:  # noqa: BLE001 - whatever the decoder trips on, these bytes cannot be written
                raise UnsendableBatch(f"cannot decode batch {batch.id} for the outbox: {exc}") from None
            marker: dict[str, Any] = {"simulated": True} if batch.simulated else {}
            if batch.event:  # each line says which campaign event it belongs to
                marker = {**marker, "campaign": batch.event.get("campaign"), "event": batch.event.get("event_id")}
            # written line by line: a 20,000-sample batch joined first was ~3 MB more at the peak of
            # every write, memory the process kept (issue 19)
            samples.sort(key=lambda s: s.t)
            lines = (exact_json({"t": s.t, "bus": s.bus, "message": s.message, "signal": s.signal, "value": s.value,
                                 "batch": batch.id, **marker}) + b"\n" for s in samples)
            size = _write_atomic(self.outbox / f"{batch.id}.jsonl", lines)
        else:
            meta = {"id": batch.id, "priority": batch.priority.name, "encoding": batch.encoding,
                    "content_type": batch.content_type, "content_encoding": batch.content_encoding,
                    "sample_count": batch.sample_count, "first_t": batch.first_t, "last_t": batch.last_t,
                    "vehicle": batch.vehicle, "buses": list(batch.buses), "simulated": batch.simulated,
                    **({"event": dict(batch.event)} if batch.event else {})}
            meta_bytes = orjson.dumps(meta)
            _write_atomic(self.outbox / f"{batch.id}.{batch.encoding}", batch.payload)
            _write_atomic(self.outbox / f"{batch.id}.meta.json", meta_bytes)
            size = len(batch.payload) + len(meta_bytes)
        sync_dir(self.outbox)
        self.outbox_bytes += size - self.batch_bytes.get(batch.id, 0)  # a resend replaces its files
        self.batch_bytes[batch.id] = size
        self._keep_within_bound(batch.id)

    def state(self) -> dict[str, Any]:
        return {"outbox": str(self.outbox), "files_written": self.files_written,
                "outbox_bytes": self.outbox_bytes, "max_bytes": self.max_bytes,
                "removed_batches": self.removed_batches, "removed_bytes": self.removed_bytes}
