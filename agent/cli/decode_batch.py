"""`vehicle-agent decode-batch`: the samples of a stored or sent batch file, one JSON line each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli.common import EXIT_OK, EXIT_USAGE, out
from agent.codec import exact_json

HELP = "print the samples of a batch file (columnar or json)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="batch file, or - for stdin")


def run(args: argparse.Namespace) -> int:
    from agent.codec import ColumnarCodec, JsonCodec

    try:
        payload = Path(args.file).read_bytes() if args.file != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        sys.stderr.write(f"error: {args.file}: {exc.strerror}\n")
        return EXIT_USAGE
    codec = JsonCodec() if payload[:1] == b"{" else ColumnarCodec()
    try:
        header, samples = codec.decode(payload)
    except (ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"error: {args.file}: {exc}\n")
        return EXIT_USAGE
    sys.stderr.write(f"{args.file}: {codec.name} batch, vehicle {header.get('vehicle')!r}, {len(samples)} samples"
                     + (", SIMULATED (built-in simulator, not a vehicle's data)" if header.get("sim") else "") + "\n")
    for s in sorted(samples, key=lambda s: s.t):
        out(exact_json({"t": s.t, "bus": s.bus, "message": s.message, "signal": s.signal, "value": s.value}))
    return EXIT_OK
