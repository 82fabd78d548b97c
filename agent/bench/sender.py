"""A CAN traffic sender in its own process, for the benchmark: `python -m agent.bench.sender FD FILE RATE SECONDS`.

It writes `struct can_frame`/`canfd_frame` datagrams (prepared by the benchmark in FILE, each
prefixed by its length byte) to the socket inherited as FD: flat out when RATE is 0, else RATE
frames a second in 10 ms bursts, RATE x SECONDS frames in all. Several buses: `FD,FD,.. FILE,FILE,..`,
RATE each, from one process (a process per bus would outnumber the agent for CPU). Being another
process, its CPU is not the agent's.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

BURST_S = 0.01


def load(path: Path) -> list[bytes]:
    raw = Path(path).read_bytes()
    out, i = [], 0
    while i < len(raw):
        n = raw[i]
        out.append(raw[i + 1:i + 1 + n])
        i += 1 + n
    return out


def main(argv: list[str]) -> int:
    fds, paths, rate, seconds = argv[0].split(","), argv[1].split(","), float(argv[2]), float(argv[3])
    buses = [(socket.socket(fileno=int(fd)).send, load(Path(path))) for fd, path in zip(fds, paths, strict=True)]
    if rate <= 0:
        for send, frames in buses:
            for datagram in frames:
                send(datagram)
        return 0
    per_burst = max(1, round(rate * BURST_S))
    total = round(rate * seconds)  # exactly, even when this process falls behind and catches up
    start = time.monotonic()
    sent = 0
    while sent < total:
        n = min(per_burst, total - sent)
        for send, frames in buses:
            for i in range(sent, sent + n):
                send(frames[i % len(frames)])
        sent += n
        due = start + sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
