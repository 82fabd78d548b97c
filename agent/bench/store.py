"""Store throughput on this machine: batches and samples committed and drained a second, per fsync setting.

The store is the one stage that waits on the disk, and the fsync setting is the one knob that trades
throughput for what a power loss can take. These figures are what `vehicle-agent bench` prints in
its store section and what docs/durability.md quotes; run it on the target's eMMC, where an fsync
costs far more than on a server SSD.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.batcher import new_batch_id
from agent.model import Batch, Priority
from agent.store.sqlite import Store

# (label, samples, encoded bytes) of batches the bundled car produces under the default config:
# a 1 s window, the default 10 s window (~15,000 samples, ~22 KB columnar), and a full 256 KB batch.
BATCH_SIZES: tuple[tuple[str, int, int], ...] = (
    ("1s", 1_500, 2_400),
    ("10s", 15_000, 22_000),
    ("max", 170_000, 258_048),
)
SYNCHRONOUS = ("NORMAL", "FULL")


def _batch(samples: int, size: int, payload: bytes) -> Batch:
    now = time.time()
    return Batch(new_batch_id(now), Priority.normal, "columnar", "application/vnd.vehicle-agent.columnar+msgpack",
                 "zstd", payload[:size], samples, now - 10, now, now, "bench", ("bench",))


def bench_store(seconds: float = 4.0, directory: str | Path | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
    """Commit then drain batches for `seconds` in total; figures keyed '<synchronous>/<size label>'."""
    budget = seconds / (len(SYNCHRONOUS) * len(BATCH_SIZES) * 2)
    payload = os.urandom(max(size for _, _, size in BATCH_SIZES))  # incompressible, like zstd output
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=directory, prefix="vehicle-agent-bench-") as tmp:
        for sync in SYNCHRONOUS:
            for label, samples, size in BATCH_SIZES:
                if progress:
                    progress(f"store {sync} {label}")
                path = Path(tmp) / f"{sync}-{label}.db"
                store = Store(path, max_bytes=1 << 40, synchronous=sync)
                try:
                    n, start = 0, time.perf_counter()
                    while time.perf_counter() - start < budget or n < 3:
                        store.put(_batch(samples, size, payload))
                        n += 1
                    commit_s = time.perf_counter() - start
                    drained, start = 0, time.perf_counter()
                    while batches := store.next_batches(1):
                        store.ack(batches[0].id)
                        drained += 1
                    drain_s = time.perf_counter() - start
                finally:
                    store.close()
                results[f"{sync}/{label}"] = {
                    "batch_samples": samples,
                    "batch_bytes": size,
                    "commit_batches_per_s": round(n / commit_s, 1),
                    "commit_samples_per_s": round(n * samples / commit_s),
                    "commit_ms": round(commit_s / n * 1000, 3),
                    "drain_batches_per_s": round(drained / drain_s, 1),
                    "drain_samples_per_s": round(drained * samples / drain_s),
                }
    return results
