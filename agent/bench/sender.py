"""A CAN traffic sender in its own process, for the benchmark: `python -m agent.bench.sender FD FILE RATE SECONDS`.

It writes `struct can_frame`/`canfd_frame` datagrams (prepared by the benchmark in FILE, each
prefixed by its length byte) to the socket inherited as FD: flat out when RATE is 0, else RATE
frames a second in 10 ms bursts, RATE x SECONDS frames in all. Being another process, its CPU is not the agent's.
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
    fd, path, rate, seconds = int(argv[0]), Path(argv[1]), float(argv[2]), float(argv[3])
    sock = socket.socket(fileno=fd)
    frames = load(path)
    send = sock.send
    if rate <= 0:
        for datagram in frames:
            send(datagram)
        return 0
    per_burst = max(1, round(rate * BURST_S))
    total = round(rate * seconds)  # exactly, even when this process falls behind and catches up
    start = time.monotonic()
    sent = 0
    while sent < total:
        for _ in range(min(per_burst, total - sent)):
            send(frames[sent % len(frames)])
            sent += 1
        due = start + sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
