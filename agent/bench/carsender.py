"""A whole car's CAN traffic from one process, for the benchmark's saturation run:
`python -m agent.bench.carsender RATE SECONDS FD:FILE [FD:FILE ...]`.

Like `agent.bench.sender` (same frame files), but for several buses at once: every bus gets RATE
frames a second, in 10 ms bursts, for SECONDS, its datagrams written to the socket inherited as FD.
One process for eight buses keeps the sender's own CPU (64,000 sends a second) in one place, off
the agent's account.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from agent.bench.sender import BURST_S, load


def main(argv: list[str]) -> int:
    rate, seconds = float(argv[0]), float(argv[1])
    buses = []
    for spec in argv[2:]:
        fd, path = spec.split(":", 1)
        buses.append((socket.socket(fileno=int(fd)).send, load(Path(path))))
    per_burst = max(1, round(rate * BURST_S))
    start = time.monotonic()
    sent = 0  # frames per bus so far
    while time.monotonic() - start < seconds:
        for send, frames in buses:
            n = len(frames)
            for i in range(sent, sent + per_burst):
                send(frames[i % n])
        sent += per_burst
        delay = start + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
