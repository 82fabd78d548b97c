"""`vehicle-agent`: run, decode, decode-batch, simulate, check-config, schema, status, bench.

Commands write their results to stdout (JSON lines where a program reads them) and their
diagnostics to stderr as structlog events, so `decode ... | jq` always sees clean output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import structlog

from agent import __version__
from agent.checks import check_databases, unmatched_rules
from agent.codec import exact_json
from agent.config import (
    ConfigError,
    build_config,
    config_path,
    env_sources,
    error_source,
    json_schema,
    load_config_data,
    restart_only_changes,
)
from agent.decode import DatabaseError, FrameDecoder, ShortFrameError, load_databases
from agent.logs import configure_logging

log = structlog.get_logger()

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _out(line: bytes | str) -> None:
    if isinstance(line, bytes):
        sys.stdout.buffer.write(line + b"\n")
    else:
        sys.stdout.write(line + "\n")


def _print_config_error(exc: ConfigError) -> None:
    """One line per error, each blamed on where it came from: the file, or the environment variable
    that overrode the key (`VEHICLE_AGENT__BATCHING__MAX_AGE=5` is not the YAML file's fault)."""
    try:
        sources = env_sources()
    except ConfigError:
        sources = {}
    for err in exc.errors:
        sys.stderr.write(f"{error_source(err, exc.source, sources)}: {err}\n")


def _load_config_or_exit(path: str | None) -> Any:
    """(config, the file's mapping with env overrides) or exit 2 with one line per error."""
    try:
        file = config_path(path)
        data = load_config_data(file)
        return build_config(data, base_dir=file.parent.resolve(), source=str(file)), data
    except ConfigError as exc:
        _print_config_error(exc)
        raise SystemExit(EXIT_USAGE) from None


# ------------------------------------------------------------------------------------------ run
def cmd_run(args: argparse.Namespace) -> int:
    cfg, data = _load_config_or_exit(args.config)
    configure_logging(cfg.log_level)
    from agent.app import Agent
    from agent.pipeline import preload
    from agent.startup import StartupError, agent_writes, prepare_state_dir

    try:
        lock = prepare_state_dir(cfg.resolve(cfg.state_dir), agent_writes(cfg))
    except StartupError as exc:
        log.error(exc.event, **exc.fields)
        return EXIT_USAGE

    async def main() -> None:
        try:
            preload(cfg)
            agent = Agent(cfg, base=data, progress=sys.stderr.isatty() and not args.no_progress)
        except DatabaseError as exc:
            log.error("database_invalid", file=str(exc.path), line=exc.line, reason=exc.reason)
            raise SystemExit(EXIT_USAGE) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop.set)
        loop.add_signal_handler(signal.SIGHUP, _reload, agent, args.config)
        await agent.run()

    try:
        asyncio.run(main())
    finally:
        lock.release()
    return EXIT_OK


def _reload(agent: Any, path: str | None) -> None:
    """SIGHUP (`systemctl reload`): re-read the config file; a bad file is logged and changes nothing."""
    file = config_path(path)
    old = agent.cfg
    try:
        new = agent.desired.rebase(load_config_data(file))
    except ConfigError as exc:
        log.error("config_reload_rejected", file=str(file), errors=exc.errors, action="keeping the running config")
    except DatabaseError as exc:
        log.error("config_reload_rejected", file=str(exc.path), line=exc.line, errors=[exc.reason],
                  action="keeping the running config")
    except (OSError, ValueError) as exc:
        log.error("config_reload_rejected", file=str(file), errors=[str(exc)], action="keeping the running config")
    else:
        pending = restart_only_changes(old, new)
        if pending:
            log.warning("config_reload_needs_restart", file=str(file), settings=pending,
                        action="everything else is applied; these take effect at the next start")


# --------------------------------------------------------------------------------------- decode
def cmd_decode(args: argparse.Namespace) -> int:
    configure_logging("info", "console")
    from agent.can.logs import LogProblem, read_log

    try:
        decoder = FrameDecoder(load_databases(args.dbc, strict=not args.no_strict))
    except DatabaseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    source: Any = sys.stdin if args.log in (None, "-") else Path(args.log)
    if isinstance(source, Path) and not source.is_file():
        sys.stderr.write(f"error: {source}: file not found\n")
        return EXIT_USAGE
    decoded = 0
    unknown: Counter[int] = Counter()
    short = bad = 0
    for item in read_log(source):
        if isinstance(item, LogProblem):
            bad += 1
            log.warning("bad_line", line=item.line, reason=item.reason, text=item.text)
            continue
        if item.is_error or item.is_remote:
            continue
        dec = decoder.get(item.id)
        if dec is None:
            unknown[item.id] += 1
            continue
        try:
            values = dec.decode(item.data)
        except ShortFrameError as exc:
            short += 1
            log.warning("short_frame", line=item.line, id=f"0x{item.id:X}", reason=str(exc))
            continue
        except Exception as exc:  # a payload cantools refuses (e.g. unknown multiplexer value)
            bad += 1
            log.warning("undecodable_frame", line=item.line, id=f"0x{item.id:X}", reason=str(exc))
            continue
        if args.labels:
            values = {k: dec.label(k, v) for k, v in values.items()}
        _out(exact_json({"t": item.t, "bus": item.channel, "id": item.id, "message": dec.name, "signals": values}))
        decoded += 1
    sys.stdout.flush()
    log.info("decode_done", decoded=decoded, unknown_frames=sum(unknown.values()), unknown_ids=len(unknown),
             short_frames=short, bad_lines=bad,
             unknown_id_list=[f"0x{i:X}" for i, _ in unknown.most_common(10)])
    if decoded:
        return EXIT_OK
    if unknown:
        log.warning("no_frame_decoded", frames=sum(unknown.values()), databases=[str(Path(d)) for d in args.dbc],
                    hint="none of the log's frame ids is in these databases: is it the right --dbc for this bus?")
    else:
        log.warning("no_frame_decoded", hint="the input holds no decodable frame (empty, or only bad lines)")
    return EXIT_FAIL


def cmd_decode_batch(args: argparse.Namespace) -> int:
    """Print the samples of a stored/sent batch file (columnar or json), one JSON line each."""
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
        _out(exact_json({"t": s.t, "bus": s.bus, "message": s.message, "signal": s.signal, "value": s.value}))
    return EXIT_OK


# ------------------------------------------------------------------------------------- simulate
def cmd_simulate(args: argparse.Namespace) -> int:
    configure_logging("info")
    from agent.can.simulator import record_candump_log, run_simulator

    try:
        db = load_databases(args.dbc)
    except DatabaseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    if args.record:
        n = record_candump_log(db, args.record, seconds=args.duration or 10.0, channel=args.channel,
                               seed=args.seed)
        log.info("simulate_recorded", file=args.record, frames=n)
        return EXIT_OK
    import can

    from agent.can.source import channel_missing, socketcan_available

    interface = "socketcan" if args.interface == "auto" else args.interface
    if interface == "socketcan" and not socketcan_available(args.channel):
        why = (f"SocketCAN channel {args.channel} does not exist on this machine" if channel_missing(args.channel)
               else f"this kernel has no SocketCAN (or {args.channel} is not a CAN interface)")
        sys.stderr.write(f"error: {why}: create it (sudo ip link add dev {args.channel} type vcan && "
                         f"sudo ip link set up {args.channel}; docs/vcan.md), or pass --interface virtual for "
                         "python-can's in-process bus (no other process sees its frames)\n")
        return EXIT_USAGE
    try:
        bus = can.Bus(interface=interface, channel=args.channel, fd=True) if interface == "socketcan" \
            else can.Bus(interface=interface, channel=args.channel)
    except (can.CanError, OSError, ValueError) as exc:
        sys.stderr.write(f"error: cannot open {interface} channel {args.channel}: {exc}\n")
        return EXIT_FAIL

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("simulate_start", interface=interface, channel=args.channel, rate=args.rate,
                 messages=len(db.messages))
        return await run_simulator(bus, db, rate=args.rate, duration=args.duration, stop=stop, seed=args.seed)

    try:
        sent = asyncio.run(main())
    finally:
        bus.shutdown()
    log.info("simulate_done", frames=sent)
    return EXIT_OK


# -------------------------------------------------------------------------------- config, schema
def cmd_check_config(args: argparse.Namespace) -> int:
    configure_logging("error")  # cantools' complaints about lenient databases are listed below instead
    path = config_path(args.file)
    try:
        cfg = build_config(load_config_data(path), base_dir=path.parent.resolve(), source=str(path))
        lenient = check_databases(cfg, source=str(path))
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_USAGE
    for rule in unmatched_rules(cfg):
        sys.stderr.write(f"{path}: warning: {rule}\n")
    for line in lenient:
        _out(line)
    _out(f"{path}: OK ({len(cfg.buses)} buses, sink {cfg.sink.type}, encoding {cfg.encoding.format})"
         + (f", {len(lenient)} complaints of cantools' strict checks (strict: false)" if lenient else ""))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    _out(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2))
    return EXIT_OK


# --------------------------------------------------------------------------------------- status
def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def not_alive_reason(doc: dict[str, Any], max_age: float = 5.0) -> str | None:
    """Why the agent of a status document is not running (None: it runs): the status file is stale,
    or (on this host) its process is gone."""
    import socket

    from agent.health import status_age

    age = status_age(doc)
    a = doc.get("agent", {})
    if age >= max_age:
        return (f"the status is {age:.0f} s old (more than {max_age:.0f} s): pid {a.get('pid')} stopped, "
                "or its event loop is stuck")
    if a.get("host") == socket.gethostname() and a.get("pid"):
        try:
            os.kill(int(a["pid"]), 0)
        except ProcessLookupError:
            return f"pid {a['pid']}, which wrote the status, is not running"
        except PermissionError:
            return None
    return None


def _agent_alive(doc: dict[str, Any], max_age: float = 5.0) -> bool:
    return not_alive_reason(doc, max_age) is None


def _store_lines(st: dict[str, Any]) -> list[str]:
    c = st.get("counters", {})
    lines = [f"store: {st['batches']} batches, {st['samples']} samples, {st['bytes']} bytes, "
             f"oldest pending {_fmt_age(st['oldest_pending_age_s'])}"
             + (f", ERROR {st['error']}" if st.get("error") else "")]
    for prio, d in st["by_priority"].items():
        lines.append(f"  {prio:<6}: {d['batches']} batches, {d['samples']} samples, {d['bytes']} bytes; "
                     f"evicted {c.get(f'evicted_{prio}_batches', 0)} batches/{c.get(f'evicted_{prio}_samples', 0)} samples, "
                     f"expired {c.get(f'expired_{prio}_batches', 0)} batches/{c.get(f'expired_{prio}_samples', 0)} samples")
    lines.append(f"  total: stored {c.get('stored_batches', 0)} batches, sent {c.get('sent_batches', 0)} batches/"
                 f"{c.get('sent_samples', 0)} samples")
    if c.get("corrupt_files_moved"):
        lines.append(f"  corrupt store files moved aside: {c['corrupt_files_moved']}"
                     + (f" (this run: {', '.join(st['corrupt_moved_aside'])})" if st.get("corrupt_moved_aside") else ""))
    if c.get("too_large_batches"):
        lines.append(f"  lost, larger than store.max_bytes: {c['too_large_batches']} batches/"
                     f"{c.get('too_large_samples', 0)} samples")
    if c.get("quarantined_batches"):
        discarded = c.get("quarantine_discarded_batches", 0)
        lines.append(f"  quarantined, not sent (damaged on disk, or a sink cannot prepare them): "
                     f"{c['quarantined_batches']} batches/{c.get('quarantined_samples', 0)} samples"
                     + (f"; {discarded} discarded from the quarantine (store.quarantine_max_bytes)" if discarded else ""))
        lines += [f"    {q['id']} {q['priority']}, {q['samples']} samples, {q['bytes']} bytes: {q['reason']}"
                  for q in st.get("quarantine", [])]
    spill = st.get("spill")
    if spill and (spill["batches"] or spill["dropped_samples"]):
        lines.append(f"  memory spill (store not writable): {spill['batches']} batches, {spill['bytes']} bytes "
                     f"of {spill.get('max_bytes', '?')}; lost {spill.get('dropped_batches', '?')} batches/"
                     f"{spill['dropped_samples']} samples")
    return lines


def cmd_call(args: argparse.Namespace) -> int:
    """A direct method on the running agent through its local control socket (the file sink's channel)."""
    from agent.twin.local import call_method

    if args.state_dir:
        state_dir = Path(args.state_dir)
    else:
        cfg, _ = _load_config_or_exit(args.config)
        state_dir = cfg.resolve(cfg.state_dir)
    try:
        payload = orjson.loads(args.payload) if args.payload else None
    except ValueError as exc:
        sys.stderr.write(f"error: the payload is not JSON: {exc}\n")
        return 2
    try:
        status, answer = call_method(state_dir, args.method, payload)
    except OSError as exc:
        sys.stderr.write(f"error: no agent answers on {state_dir}/control/agent.sock: {exc.strerror or exc}\n")
        return 1
    _out(orjson.dumps({"status": status, "payload": answer}, option=orjson.OPT_INDENT_2))
    return 0 if status == 200 else 1


def cmd_status(args: argparse.Namespace) -> int:
    from agent.health import losses, read_status, status_age
    from agent.store import read_stats

    store_path: Path | None = None
    if args.state_dir:
        state_dir = Path(args.state_dir)
    else:
        cfg, _ = _load_config_or_exit(args.config)
        state_dir = cfg.resolve(cfg.state_dir)
        store_path = cfg.state_path(cfg.store.path)
    try:
        doc: dict[str, Any] | None = read_status(state_dir)
    except FileNotFoundError:
        doc = None
    alive = doc is not None and _agent_alive(doc)
    if args.check:
        why = (f"no status file in {state_dir}: the agent has not run with this state directory"
               if doc is None else not_alive_reason(doc, args.max_age))
        if why:
            sys.stderr.write(f"unhealthy: {why}\n")
            return EXIT_FAIL
        return EXIT_OK
    if store_path is None:
        store_path = Path(doc["store"]["path"]) if doc and doc.get("store", {}).get("path") else state_dir / "store.db"
    if not alive:
        # The agent is not running: the store file is the truth (the last status may be up to 1 s stale).
        if doc is None and not store_path.exists():
            sys.stderr.write(f"no status in {state_dir} and no store at {store_path}: "
                             "the agent has not run with this state directory\n")
            return EXIT_FAIL
        if store_path.exists():
            try:
                fresh = read_stats(store_path).as_dict()
            except sqlite3.Error as exc:
                fresh = {"error": f"cannot read {store_path}: {exc}"}
            doc = doc or {"agent": {}, "buses": {}, "sink": {}}
            doc["store"] = {**doc.get("store", {}), **fresh, "path": str(store_path)}
            doc["losses"] = losses(doc["store"].get("counters", {}), doc["store"].get("spill", {}), doc["buses"],
                                   doc.get("sink", {}))
    assert doc is not None
    age = status_age(doc) if "updated" in doc else None
    if args.json:
        _out(orjson.dumps({**doc, "running": alive, "status_age_s": None if age is None else round(age, 1)},
                          option=orjson.OPT_INDENT_2))
        return EXIT_OK
    a, st, sk = doc["agent"], doc["store"], doc["sink"]
    if alive:
        lines = [f"vehicle-agent {a['version']} pid {a['pid']} on {a['host']}: running"]
    else:
        lines = ["vehicle-agent: not running" + (f" (last status {_fmt_age(age)} old, pid {a.get('pid')})"
                                                 if age is not None else " (no status file)")]
    if a:
        lines.append(f"vehicle {a['vehicle_id']}, config version {a['config_version']}, "
                     f"{doc['frames_per_s'] if alive else 0:.0f} frames/s, "
                     f"samples in memory (not yet in a batch) {doc.get('pending_samples', 0) if alive else 0}")
    for name, b in doc["buses"].items():
        lines.append(f"  bus {name}: {'SIMULATED, ' if b.get('simulated') else ''}{b.get('state', '?')}, frames {b['frames']}, samples {b['samples']}, "
                     f"unknown ids {b['unknown_ids']}, decode errors {b['decode_errors']}, error frames {b['error_frames']}"
                     + (f", refused: {b.get('refused_timestamps', 0)} timestamps, {b.get('refused_values', 0)} values"
                        if b.get("refused_timestamps") or b.get("refused_values") else "")
                     + _bus_health_text(b))
    if "batches" in st and st["batches"] is not None:
        lines += _store_lines(st)
    else:
        lines.append(f"store: ERROR {st.get('error')}")
    if sk:
        last = sk.get("last_send")
        lines.append(f"sink {sk['type']}: {sk['state'] if alive else 'stopped'}, sent {sk.get('sent_batches', 0)} "
                     f"batches in the last run, last successful send "
                     + ("never" if last is None else f"{_fmt_age(time.time() - last)} ago")
                     + (f", last error: {sk['last_error']}" if sk.get("last_error") else "")
                     + (f"; outbox {sk['outbox_bytes']} of {sk['max_bytes']} bytes, oldest {sk['removed_batches']} "
                        "batches removed (sink.max_bytes)" if sk.get("max_bytes") else ""))
    if doc.get("control"):
        lines.append(_control_line(doc["control"]))
    if "losses" in doc:
        lost = {k: v for k, v in doc["losses"].items() if v}
        lines.append("lost (docs/durability.md): " + (", ".join(f"{k} {v}" for k, v in lost.items()) if lost else "nothing"))
    if alive and doc.get("tasks"):
        lines.append("tasks: " + ", ".join(
            f"{name} {t['state']}" + (f" (restarted {t['restarts']}x, last error: {t['last_error']})"
                                       if t["restarts"] else "")
            for name, t in doc["tasks"].items()))
    _out("\n".join(lines))
    return EXIT_OK


def _control_line(c: dict[str, Any]) -> str:
    """The remote control: channel and link, the applied desired version, how the last document was taken."""
    last = c.get("last_document") or {}
    reset = c.get("version_reset")
    return (f"control {c.get('channel')}: {c.get('link', '?')}, desired version {c.get('desired_version')}"
            + (f", last document {last.get('ac')} {last.get('ad')}" if last else "")
            + (f", refused {c.get('rejected_documents', 0)} documents / {c.get('rejected_properties', 0)} properties"
               if c.get("rejected_documents") or c.get("rejected_properties") else "")
            + (f", version sequence restarted {reset['from']} -> {reset['to']}" if reset else "")
            + ("" if c.get("healthy", True) else ", WEDGED (watchdog not fed)"))


def _bus_health_text(bus: dict[str, Any]) -> str:
    """The raw SocketCAN reader's extras: kernel drops, the controller's state, errors by class."""
    if "controller" not in bus:
        return ""
    counters = f" (TX {bus['tx_error_counter']}, RX {bus['rx_error_counter']})" if bus.get("tx_error_counter") is not None else ""
    errors = ", ".join(f"{k} {v}" for k, v in sorted(bus.get("errors", {}).items()) if v)
    return (f", kernel drops {bus.get('kernel_drops', 0)}, controller {bus['controller']}{counters}"
            + (f", errors: {errors}" if errors else ""))


# ---------------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from agent.bench import format_report, run_bench

    configure_logging("warning")  # the agents the benchmark starts would drown its progress
    if args.dbc:
        base = {"vehicle_id": "bench", "buses": [{"name": "bus0", "databases": [str(Path(d).resolve()) for d in args.dbc]}]}
        defaults, _ = _load_config_or_exit(args.config)
        base.update(collection=defaults.collection.model_dump(mode="json"))
        try:
            cfg = build_config(base, base_dir=Path.cwd(), source="--dbc")
        except ConfigError as exc:
            _print_config_error(exc)
            return EXIT_USAGE
    else:
        cfg, _ = _load_config_or_exit(args.config)
    show = (lambda msg: sys.stderr.write(f"bench: {msg}\n")) if not args.quiet else (lambda _msg: None)
    try:
        result = run_bench(cfg, seconds=args.seconds, progress=show)
    except DatabaseError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    _out(orjson.dumps(result) if args.json else format_report(result))
    return EXIT_OK


# ---------------------------------------------------------------------------------------- debug
def cmd_debug_codegen(args: argparse.Namespace) -> int:
    """Print the Python the collector generates for a message under the config's collection policy."""
    from agent.pipeline import build

    cfg, _ = _load_config_or_exit(args.config)
    configure_logging("error")
    try:
        pipeline = build(cfg, on_batch=lambda _b: None)
    except DatabaseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    found = [(name, source) for bus, collector in pipeline.collectors.items() if args.bus in (None, bus)
             for name, source in collector.generated(args.message)]
    if not found:
        sys.stderr.write(f"error: no bus of {args.config or 'the config'} wants a signal of message {args.message!r}\n")
        return EXIT_USAGE
    _out("\n".join(f"# {name}\n{source}" for name, source in found))
    return EXIT_OK


# ----------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vehicle-agent", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"vehicle-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the agent (default config: $VEHICLE_AGENT_CONFIG or config/agent.yaml)")
    r.add_argument("--config", help="config file")
    r.add_argument("--no-progress", action="store_true", help="no live progress line on a TTY")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("decode", help="decode a candump -L / ASC / BLF log to JSON lines")
    d.add_argument("--dbc", action="append", required=True, help="database file (repeat for several)")
    d.add_argument("--labels", action="store_true", help="write enum signals as their label")
    d.add_argument("--no-strict", action="store_true",
                   help="load databases without cantools' strict checks (overlapping signals, signals that do not fit)")
    d.add_argument("log", nargs="?", help="log file (.log candump -L, .asc, .blf); stdin if absent or -")
    d.set_defaults(func=cmd_decode)

    db = sub.add_parser("decode-batch", help="print the samples of a batch file (columnar or json)")
    db.add_argument("file", help="batch file, or - for stdin")
    db.set_defaults(func=cmd_decode_batch)

    s = sub.add_parser("simulate", help="send plausible drive traffic for every message of a database")
    s.add_argument("--dbc", action="append", required=True, help="database file (repeat for several)")
    s.add_argument("--channel", default="vcan0")
    s.add_argument("--interface", default="auto",
                   help="socketcan | virtual | any python-can interface (auto: socketcan; a channel that does not "
                        "exist is an error)")
    s.add_argument("--rate", type=float, default=1.0, help="speed-up of simulated time (2 = twice real time)")
    s.add_argument("--duration", type=float, default=None, help="simulated seconds (default: until Ctrl-C)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--record", metavar="LOG", help="write a candump -L log of --duration s instead of sending")
    s.set_defaults(func=cmd_simulate)

    c = sub.add_parser("check-config", help="validate a config; errors with their path, exit code 2")
    c.add_argument("file", nargs="?", help="config file (default config/agent.yaml)")
    c.set_defaults(func=cmd_check_config)

    sc = sub.add_parser("schema", help="print the JSON Schema of the config (the twin's desired-properties contract)")
    sc.set_defaults(func=cmd_schema)

    b = sub.add_parser("bench", help="measure each stage on this machine: frames/s, us/frame, wire bytes, RSS")
    b.add_argument("--config", help="config whose buses and collection policy to measure (default config/agent.yaml)")
    b.add_argument("--dbc", action="append", help="measure one bus with this database instead (repeat for several)")
    b.add_argument("--seconds", type=float, default=20.0, help="about how long the benchmark runs (default 20)")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    b.add_argument("--quiet", action="store_true", help="no progress on stderr")
    b.set_defaults(func=cmd_bench)

    st = sub.add_parser("status", help="show the running agent's status from its state directory")
    st.add_argument("--config", help="config file (to find the state directory)")
    st.add_argument("--state-dir", help="state directory (instead of --config)")
    st.add_argument("--json", action="store_true", help="print the whole status document")
    st.add_argument("--check", action="store_true", help="exit 0 if the status is fresh (health check)")
    st.add_argument("--max-age", type=float, default=30.0, help="--check: seconds a status may be old")
    st.set_defaults(func=cmd_status)

    ca = sub.add_parser("call", help="call a method (flush, get_status, set_log_level) on the running agent (file sink)")
    ca.add_argument("method")
    ca.add_argument("payload", nargs="?", help='JSON payload, e.g. \'{"level": "debug", "duration_s": 600}\'')
    ca.add_argument("--config", help="config file (to find the state directory)")
    ca.add_argument("--state-dir", help="state directory (instead of --config)")
    ca.set_defaults(func=cmd_call)

    dbg = sub.add_parser("debug", help="look inside the agent").add_subparsers(dest="what", required=True)
    cg = dbg.add_parser("codegen", help="print the Python generated for a message's frames (decode, filters, appends)")
    cg.add_argument("--config", help="config file (default config/agent.yaml)")
    cg.add_argument("--message", required=True, help="message name, as in the database")
    cg.add_argument("--bus", help="only this bus")
    cg.set_defaults(func=cmd_debug_codegen)
    return p


EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141  # as a shell reports SIGINT and SIGPIPE


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
