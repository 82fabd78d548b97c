"""The text of the status document: `vehicle-agent status` (render) and the terminal's progress line.

The one place the status document is written for human eyes. `render` reads the JSON a StatusView
holds (the status file of an agent that may have stopped or be of another version); the progress
line reads the running agent's typed document.
"""

from __future__ import annotations

import time
from typing import Any

from agent.health import StatusFileDamaged
from agent.status.document import StatusDocument
from agent.status.view import DAMAGE, StatusView


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def progress_line(doc: StatusDocument) -> str:
    """The one line a terminal shows while the agent runs (agent/logs.py keeps log lines off it)."""
    samples = sum(b.counts.samples for b in doc.buses.values())
    st = doc.store
    return (f"{doc.frames_per_s:>8.0f} frames/s | samples kept {samples:>9} | batches stored "
            f"{st.counters.get('stored_batches', 0):>6} sent {st.counters.get('sent_batches', 0):>6} | "
            f"store depth {'?' if st.batches is None else st.batches:>4} ({(st.bytes or 0) / 1024:.0f} KiB) | "
            f"sink {doc.sink.forwarder.state:<9}" + (" | SIMULATED" if doc.simulated else ""))


def render(view: StatusView) -> str:
    """The human text of `vehicle-agent status`; StatusFileDamaged for a document it cannot show."""
    try:
        text = _render(view)
    except DAMAGE as exc:
        raise StatusFileDamaged(f"the status document cannot be shown ({type(exc).__name__}: {exc}); "
                                "vehicle-agent status --json prints it as it is") from None
    return (f"status file damaged, not used: {view.damaged}\n" if view.damaged else "") + text


def _render(view: StatusView) -> str:
    doc, alive, age = view.doc, view.alive, view.age
    a, st, sk = doc["agent"], doc["store"], doc["sink"]
    if alive:
        lines = [f"vehicle-agent {a['version']} pid {a['pid']} on {a['host']}: running"]
    else:
        lines = ["vehicle-agent: not running" + (f" (last status {fmt_age(age)} old, pid {a.get('pid')})"
                                                 if age is not None else "" if view.damaged else " (no status file)")]
    if a:
        lines.append(f"vehicle {a['vehicle_id']}, config version {a['config_version']}, "
                     f"{doc['frames_per_s'] if alive else 0:.0f} frames/s, "
                     f"samples in memory (not yet in a batch) {doc.get('pending_samples', 0) if alive else 0}")
    for name, b in doc["buses"].items():
        lines.append(f"  bus {name}: {'SIMULATED, ' if b.get('simulated') else ''}{b.get('state', '?')}, "
                     f"frames {b['frames']}, samples {b['samples']}, unknown ids {b['unknown_ids']}, "
                     f"decode errors {b['decode_errors']}, error frames {b['error_frames']}"
                     + (f", refused: {b.get('refused_timestamps', 0)} timestamps, {b.get('refused_values', 0)} values"
                        if b.get("refused_timestamps") or b.get("refused_values") else "")
                     + _lost_text(b) + _bus_health_text(b) + _simulator_text(b.get("simulator")))
    if "batches" in st and st["batches"] is not None:
        lines += _store_lines(st)
    else:
        lines.append(f"store: ERROR {st.get('error')}")
    if sk:
        last = sk.get("last_send")
        lines.append(f"sink {sk['type']}: {sk['state'] if alive else 'stopped'}, sent {sk.get('sent_batches', 0)} "
                     f"batches in the last run, last successful send "
                     + ("never" if last is None else f"{fmt_age(time.time() - last)} ago")
                     + (f", last error: {sk['last_error']}" if sk.get("last_error") else "")
                     + (f"; outbox {sk['outbox_bytes']} of {sk['max_bytes']} bytes, oldest {sk['removed_batches']} "
                        "batches removed (sink.max_bytes)" if sk.get("max_bytes") else ""))
    if doc.get("control"):
        lines.append(_control_line(doc["control"]))
    if (doc.get("databases") or {}).get("active_version") or (doc.get("databases") or {}).get("target_version"):
        lines.append(_databases_line(doc["databases"]))
    status_file = doc.get("status_file") or {}
    if status_file.get("write_failures"):
        lines.append(f"status file: {status_file['write_failures']} writes failed (this run), last error: "
                     f"{status_file.get('last_error') or 'none since'}")
    if "losses" in doc:
        lost = {k: v for k, v in doc["losses"].items() if v}
        lines.append("lost (docs/durability.md): " + (", ".join(f"{k} {v}" for k, v in lost.items()) if lost else "nothing"))
    if alive and doc.get("tasks"):
        lines.append("tasks: " + ", ".join(
            f"{name} {t['state']}" + (f" (restarted {t['restarts']}x, last error: {t['last_error']})"
                                       if t["restarts"] else "")
            for name, t in doc["tasks"].items()))
    lines += _campaign_lines(doc.get("campaigns") or {})
    lines += _update_lines(doc.get("software_update") or {})
    return "\n".join(lines)


def _update_lines(up: dict[str, Any]) -> list[str]:
    """The software update (docs/ota.md): its state, progress, what it waits for, its error."""
    damaged = ([f"software update state file found damaged at start: {up['state_damaged']} (moved aside)"]
               if up.get("state_damaged") else [])
    if not up.get("id"):
        return damaged
    line = f"software update {up['id']} ({up.get('version')}, {up.get('backend')}): {up['state']}"
    if up["state"] in ("downloading", "installing"):
        line += f" {up.get('progress_percent', 0)} %"
    if up.get("waiting_for"):
        line += f", waiting for {up['waiting_for']}"
    if up.get("error"):
        line += f", error: {up['error']}"
    return [line, *damaged]


def _campaign_lines(camp: dict[str, Any]) -> list[str]:
    """A line per campaign (docs/campaigns.md), and a warning when the buffers are cut by the budget."""
    lines = [f"  campaign {cid}: {c['state']}, triggers {c['triggers']} (suppressed {c['suppressed']}), "
             f"events {c['events']}, samples {c['samples']}, buffers {c['buffer_bytes'] // 1024} KiB"
             + (f", eval errors {c['eval_errors']}" if c.get("eval_errors") else "")
             for cid, c in camp.get("campaigns", {}).items()]
    if camp.get("budget_limited"):
        lines.append(f"campaign buffers LIMITED by campaign_buffer_max_bytes ({camp['budget_bytes']} bytes): "
                     "events may miss their oldest samples")
    return lines


def _store_lines(st: dict[str, Any]) -> list[str]:
    c = st.get("counters", {})
    lines = [f"store: {st['batches']} batches, {st['samples']} samples, {st['bytes']} bytes, "
             f"oldest pending {fmt_age(st['oldest_pending_age_s'])}"
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
    wal = st.get("wal") or {}
    if wal.get("checkpoints_incomplete"):
        lines.append(f"  write-ahead log: {wal['bytes']} of {wal['limit_bytes']} bytes allowed; "
                     f"{wal['checkpoints_incomplete']} checkpoints could not finish, last: {wal.get('last_error')}")
    return lines


def _databases_line(d: dict[str, Any]) -> str:
    """Remote databases (docs/remote-databases.md): the active version, what is under way, the last error."""
    return (f"databases: version {d.get('active_version') or 'local files'}"
            + (" (watched)" if d.get("watching") else "")
            + (f", {d['state']} {d.get('target_version')} ({d.get('progress_bytes', 0)} of {d.get('total_bytes', 0)} "
               "bytes)" if d.get("target_version") else "")
            + f", rollbacks {d.get('rollbacks', 0)}, refused {d.get('refused_versions', 0)}"
            + (f", last error: {d['last_error']}" if d.get("last_error") else ""))


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


def _lost_text(bus: dict[str, Any]) -> str:
    """Frames the source lost before decoding (agent/can/rxqueue.py), and how it would know."""
    if "lost_frames" not in bus:
        return ""
    rcvbuf = f", receive buffer {bus['rcvbuf_bytes']} bytes" if bus.get("rcvbuf_bytes") else ""
    return f", lost frames {bus['lost_frames']} ({bus.get('loss_seen', '?')}{rcvbuf})"


def _simulator_text(sim: dict[str, Any] | None) -> str:
    """The built-in simulator, when it could not keep real time or lost frames (never a bus loss)."""
    if not sim or not (sim.get("dropped") or sim.get("behind_s", 0) >= 1):
        return ""
    return (f"; simulator {sim['behind_s']:.0f} s behind real time (readers behind), "
            f"{sim['dropped']} simulated frames dropped")


def _bus_health_text(bus: dict[str, Any]) -> str:
    """The raw SocketCAN reader's extras: kernel drops, the controller's state, errors by class."""
    if "controller" not in bus:
        return ""
    counters = f" (TX {bus['tx_error_counter']}, RX {bus['rx_error_counter']})" if bus.get("tx_error_counter") is not None else ""
    errors = ", ".join(f"{k} {v}" for k, v in sorted(bus.get("errors", {}).items()) if v)
    return (f", controller {bus['controller']}{counters}"
            + (f", errors: {errors}" if errors else ""))
