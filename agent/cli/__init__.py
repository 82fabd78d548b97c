"""`vehicle-agent`: run, decode, decode-batch, simulate, check-config, schema, status, bench, call, debug.

One module per subcommand (argument definitions and glue only; the work lives in library modules
that tests call directly). Commands write their results to stdout (JSON lines where a program reads
them) and their diagnostics to stderr as structlog events, so `decode ... | jq` always sees clean
output. Exit codes: 0 done, 1 failed, 2 usage, config or deployment error, 130 Ctrl-C, 141 the
reader of stdout went away.
"""

from __future__ import annotations

import argparse
import os
import sys

# structlog imports rich whenever it is installed (for its console renderer's tracebacks): 3.7 MB
# of RSS and ~0.2 s of start-up in every agent process, for nothing the agent uses (without rich the
# console renderer prints plain tracebacks). rich is no dependency of the agent; where it is
# installed it came with other tools (mutmut -> textual -> rich). The commands keep it out, unless
# something imported it already; the library itself does not decide for its host process.
if "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` then raises ImportError

from agent import __version__  # noqa: E402 - after keeping rich out
from agent.cli import bench, call, check_config, debug, decode, decode_batch, run, schema, simulate, status
from agent.cli.common import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE  # noqa: E402

COMMANDS = {"run": run, "decode": decode, "decode-batch": decode_batch, "simulate": simulate,
            "check-config": check_config, "schema": schema, "bench": bench, "status": status, "call": call,
            "debug": debug}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vehicle-agent", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"vehicle-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP)
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command; the ways a command line ends early end without a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C where no handler of the command is installed (start-up, decode)
        sys.stderr.write("\ninterrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `decode ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        return EXIT_BROKEN_PIPE
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        sys.stderr.write(f"error: {exc.filename}: {exc.strerror}\n" if exc.filename else f"error: {exc}\n")
        return EXIT_USAGE
