"""Parse a candidate set of databases in a child process, bounded in memory and time.

A database from the cloud is parsed here first: cantools on a hostile file (gigantic, binary, deeply
nested XML) may take minutes or gigabytes, and the agent's one loop must go on collecting. The
child (`python -m agent.remotedb.probe`, niced) caps its address space and CPU time with
setrlimit; the parent kills it after `timeout_s`. Only a set that parses here is parsed again
in the agent (in a worker thread), then swapped in.

    stdin:  {"sets": [{"paths": [...], "strict": true}, ...]}
    stdout: {"ok": true} | {"error": {"path": ..., "line": ..., "reason": ...}}
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson

PROBE_OUTPUT_MAX = 64 * 1024
REASON_MAX = 1000


@dataclass(frozen=True, slots=True)
class ProbeFailure:
    """Why a set did not parse: the file (when known), its line, and a reason."""

    path: Path | None
    line: int
    reason: str


async def probe(sets: list[tuple[list[Path], bool]], *, timeout_s: float, memory_mb: int) -> ProbeFailure | None:
    """None when every set (paths, strict) parses within the limits; else why not."""
    request = orjson.dumps({"sets": [{"paths": [str(p) for p in paths], "strict": strict} for paths, strict in sets]})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.remotedb.probe", str(memory_mb), str(int(timeout_s) + 1),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(request), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return ProbeFailure(None, 0, f"parsing took longer than {timeout_s:g} s")
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    try:
        answer = orjson.loads(out[:PROBE_OUTPUT_MAX])
    except orjson.JSONDecodeError:
        answer = None
    if isinstance(answer, dict) and answer.get("ok") is True and proc.returncode == 0:
        return None
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        err = answer["error"]
        return ProbeFailure(Path(str(err.get("path"))) if err.get("path") else None,
                            int(err.get("line") or 0), str(err.get("reason") or "not a database"))
    code = proc.returncode or 0
    if code < 0:
        why = f"the parser was killed by signal {-code} (CPU time limit)" if -code in (9, 24) else \
            f"the parser was killed by signal {-code}"
    else:
        why = f"the parser ran out of memory ({memory_mb} MiB) or failed (exit {code})"
    return ProbeFailure(None, 0, why)


def _main() -> int:
    import resource

    memory_mb, cpu_s = int(sys.argv[1]), int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    with contextlib.suppress(OSError):
        os.nice(10)   # below the agent: its loop has the CPU first
    answer = os.fdopen(os.dup(1), "wb")   # the answer's own descriptor; logs go where stderr goes
    os.dup2(2, 1)
    from agent.decode import DatabaseError, load_databases

    result: dict[str, object] = {"ok": True}
    try:
        for entry in orjson.loads(sys.stdin.buffer.read(4 * 2**20))["sets"]:
            load_databases([Path(p) for p in entry["paths"]], strict=bool(entry["strict"]))
    except DatabaseError as exc:
        # cantools quotes the offending text, a whole binary line: the start is enough for the log
        result = {"error": {"path": str(exc.path), "line": exc.line, "reason": exc.reason[:REASON_MAX]}}
    except MemoryError:
        result = {"error": {"path": None, "line": 0, "reason": "out of memory"}}
    except RecursionError:
        result = {"error": {"path": None, "line": 0, "reason": "nested too deeply"}}
    except Exception as exc:  # noqa: BLE001 - whatever cantools raises on a hostile file is a refusal
        result = {"error": {"path": None, "line": 0, "reason": f"not a database ({type(exc).__name__})"}}
    answer.write(orjson.dumps(result))
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
