"""The remote database updater: one supervised task that fetches, checks, swaps and watches versions.

The desired property only names a target (`request`, answered at once: 200 when it is already
active, 202 while it is fetched, 400 for a version refused before). The task then:

1. downloads every file into the content store (agent.download, worker threads: the loop that
   collects frames never waits on the network); a wrong size or hash is final (400 naming the file),
   a network failure is retried in rounds with the agent's backoff, the vehicle may be offline;
2. links the files into the version's folder and parses the set in a child process with memory and
   time limits (probe.py), then once more in a worker thread to warm the parse cache;
3. swaps it in through `DesiredState.activate_databases` (the live `apply_config`: checks campaigns
   and collection rules first, raises before changing anything): 200 with the version;
4. watches each bus's share of unknown ids and decode errors: a jump against the share before the
   swap (a DBC for another ECU release) rolls back to the known-good version (or the local files);
   otherwise, after `watch_frames` frames a bus or `watch_max_s`, the version is known-good.

A refused or rolled-back version is remembered (state.json) and not tried again until the cloud
sends another one. A newer target supersedes the one under way: its download is cancelled at once
(the worker thread ends within a chunk or a watchdog tick), its partial files are removed unless the
new target has the same file (content-addressed: then it resumes), and only the newest target is
ever swapped in.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog

from agent.collect.collector import BusCounters
from agent.config import AgentConfig, RemoteDatabasesConfig
from agent.decode import load_databases
from agent.download import LOCAL, DownloadError, Policy, fetch_async, redact
from agent.liveness import backoff_delay, beat
from agent.remotedb.document import DatabasesDocument, parse_document
from agent.remotedb.probe import probe
from agent.remotedb.versions import Version, Versions

log = structlog.get_logger()

RETRY_INITIAL_S = 5.0
JUDGE_MIN_FRAMES = 50        # frames a bus needs since the swap before its shares are judged
BASELINE_S = 120.0           # the shares before a swap: over the last two minutes
ACK_VALUE_MAX_BYTES = 4096   # an ack repeats the (redacted) document up to this size, as other acks do


class Refused(Exception):
    """A candidate version that cannot be used; the message names the file or the check, for the cloud."""


class Buses(Protocol):
    """What the updater sees of the running buses (implemented by agent.app.Agent)."""

    counters: dict[str, BusCounters]

    def known_ids(self) -> dict[str, set[int]]:
        """Per bus, the frame ids its databases define now."""

    def pass_ids(self, ids: dict[str, set[int]]) -> None:
        """Let these ids through the buses' receive filters besides the wanted ones (SocketCAN filters
        in the kernel: ids the new files dropped would never be counted as unknown otherwise)."""


class Activator(Protocol):
    def candidate(self, overlay: Path | None) -> AgentConfig:
        """The config with `overlay` as the active version (raises Refused)."""

    def activate(self, overlay: Path | None) -> None:
        """Swap it in live (raises Refused before changing anything)."""


@dataclass
class Watch:
    """A swapped-in version on probation."""

    version: Version
    started: float
    at_swap: dict[str, tuple[int, int, int]]       # bus -> (frames, unknown_ids, decode_errors)
    before: dict[str, tuple[float, float]]         # bus -> (unknown share, decode-error share) before


def _snapshot(counters: Mapping[str, BusCounters]) -> dict[str, tuple[int, int, int]]:
    return {name: (c.frames, c.unknown_ids, c.decode_errors) for name, c in counters.items()}


def _shares(now: tuple[int, int, int], then: tuple[int, int, int]) -> tuple[int, float, float]:
    frames = now[0] - then[0]
    if frames <= 0:
        return 0, 0.0, 0.0
    return frames, (now[1] - then[1]) / frames, (now[2] - then[2]) / frames


class DatabaseUpdater:
    """Holds the remote database state and runs the updates (see the module's docstring)."""

    def __init__(self, root: Path) -> None:
        self.versions = Versions(root)
        self.state = self.versions.load()
        self.target: tuple[DatabasesDocument | None, int | None] | None = None   # (None: back to local files)
        self.ack: dict[str, Any] | None = None
        self.acked = asyncio.Event()
        self.wake = asyncio.Event()
        self.phase = "idle"
        self.progress: tuple[int, int] = (0, 0)
        self.watch: Watch | None = None
        self.history: deque[tuple[float, dict[str, tuple[int, int, int]]]] = deque()
        self._retry_at = 0.0
        self._rounds = 0
        self._cancel = threading.Event()   # the download under way: set when its target is superseded
        self._clean = False                # a superseded target's files to remove (once no download runs)
        self.counters = {"downloads": 0, "downloaded_bytes": 0, "download_failures": 0, "activations": 0,
                         "refused_versions": 0, "rollbacks": 0, "superseded_versions": 0}
        if self.state.active is not None and (self.state.known_good is None
                                              or self.state.known_good.key != self.state.active.key):
            self.watch = Watch(self.state.active, time.monotonic(), {}, {})   # on probation again after a restart

    # ------------------------------------------------------------------ the desired property
    def overlay(self) -> Path | None:
        """The active version's folder: bus database names resolve here first."""
        return self.versions.folder(self.state.active.key) if self.state.active is not None else None

    def _set_ack(self, code: int, version: int | None, why: str, value: Any) -> dict[str, Any]:
        if value is not None and len(orjson.dumps(value)) > ACK_VALUE_MAX_BYTES:
            value = None   # the reported section has 32 KB in all
        self.ack = {"value": value, "ac": code, "av": version, "ad": why}
        self.acked.set()
        return self.ack

    def request(self, value: Any, av: int | None) -> dict[str, Any]:
        """The desired `databases` (already validated) at desired version `av`: the ack to give now."""
        if value is None:
            return self.request_local(av)
        doc = parse_document(value)
        shown = doc.redacted()
        active = self.state.active
        if active is not None and active.key == doc.key:
            if self.target is not None and self.target[0] is not None:
                self._supersede(doc)
                self.target = None
            return self._set_ack(200, av, f"version {doc.version} active", shown)
        if doc.key in self.state.refused:
            return self._set_ack(400, av, f"version {doc.version} refused: {self.state.refused[doc.key]}; "
                                          "send a new version", shown)
        superseded = ""
        if self.target is None or self.target[0] is None or self.target[0].key != doc.key:
            superseded = self._supersede(doc)
            self.target = (doc, av)
            self._retry_at, self._rounds = 0.0, 0
            self.wake.set()
            log.info("remote_databases_requested", version=doc.version, files=[f.name for f in doc.files])
        return self._set_ack(202, av, f"version {doc.version}: downloading{superseded}", shown)

    def request_local(self, av: int | None) -> dict[str, Any]:
        """The cloud removed `databases`: back to the local files."""
        if self.state.active is None:
            self._supersede(None)
            self.target = None
            return self._set_ack(200, av, "local database files", None)
        self._supersede(None)
        self.target = (None, av)
        self.wake.set()
        return self._set_ack(202, av, "returning to the local database files", None)

    def _supersede(self, new: DatabasesDocument | None) -> str:
        """The cloud wants `new` (None: the local files) instead of the version under way, if any: that
        one's download is cancelled and its files not wanted any more are removed (in `run`, once its
        worker thread has ended). Returns what the new ack says about it."""
        old = self.target[0] if self.target is not None else None
        if old is None or (new is not None and new.key == old.key):
            return ""
        self._cancel.set()
        self._clean = True
        self.counters["superseded_versions"] += 1
        log.info("remote_databases_superseded", version=old.version, by=new.version if new else "local files",
                 phase=self.phase)
        return f"; version {old.version} superseded"

    def deactivate(self, why: str) -> None:
        """The active version cannot be used (found at start): the local files, said so."""
        self.state.active = None
        self.state.last_error = why
        self.state.watch_ids = {}
        self.watch = None
        self.versions.save()

    # ------------------------------------------------------------------ state out
    def status(self) -> dict[str, Any]:
        """The `databases` section of status (the reported `database_state`)."""
        s = self.state
        target = self.target[0] if self.target else None
        return {
            "active_version": s.active.version if s.active else None,
            "files": dict(s.active.files) if s.active else {},
            "known_good_version": s.known_good.version if s.known_good else None,
            "state": self.phase,
            "target_version": target.version if target else None,
            "progress_bytes": self.progress[0], "total_bytes": self.progress[1],
            "watching": self.watch is not None,
            "last_error": s.last_error,
            "refused": sorted({k.rsplit("-", 1)[0] for k in s.refused}),
            **self.counters,
        }

    # ------------------------------------------------------------------ the task
    async def run(self, stop: asyncio.Event, *, settings: Callable[[], AgentConfig], activator: Activator,
                  buses: Buses) -> None:
        """Until stop: fetch and swap the target, watch the version on probation."""
        if self.watch is None:
            self.state.watch_ids = {}
        elif self.state.watch_ids:   # on probation again after a restart: the filter passes the same ids
            buses.pass_ids({bus: set(ids) for bus, ids in self.state.watch_ids.items()})
        while not stop.is_set():
            beat()
            if self._clean:   # no download runs here: `_update` is awaited below
                self._clean = False
                pending = self.target[0] if self.target is not None else None
                self.versions.keep_recent(Version.of(pending) if pending is not None else None)
            now = time.monotonic()
            snap = _snapshot(buses.counters)
            self.history.append((now, snap))
            while self.history and now - self.history[0][0] > BASELINE_S:
                self.history.popleft()
            cfg = settings()
            if self.watch is not None:
                self._judge(cfg.remote_databases, snap, activator, buses)
            target = self.target
            if target is not None and now >= self._retry_at:
                await self._update(target, cfg, activator, buses)
                continue
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), 1.0)
            except TimeoutError:
                pass

    def _refuse(self, doc: DatabasesDocument | None, av: int | None, why: str) -> None:
        self.phase = "idle"
        self.state.last_error = why
        if doc is not None:
            self.state.refused[doc.key] = why
            self.counters["refused_versions"] += 1
            log.warning("remote_databases_refused", version=doc.version, reason=why)
            self._set_ack(400, av, f"version {doc.version} refused: {why}", doc.redacted())
        else:
            log.warning("remote_databases_refused", version=None, reason=why)
            self._set_ack(400, av, f"local database files refused: {why}", None)
        if self.target is not None and self.target[0] is doc:
            self.target = None
        self.versions.save()

    async def _update(self, target: tuple[DatabasesDocument | None, int | None], cfg: AgentConfig,
                      activator: Activator, buses: Buses) -> None:
        doc, av = target
        settings = cfg.remote_databases
        version = Version.of(doc) if doc is not None else None
        if doc is not None and version is not None:
            policy = Policy(max_bytes=max(f.size for f in doc.files),
                            ca_file=cfg.resolve(settings.ca_file) if settings.ca_file else None,
                            timeout_s=settings.timeout_s, deadline_s=settings.deadline_s, attempts=settings.attempts)
            if not await self._download(target, doc, policy, settings):
                return
            if self.target is not target:
                self.phase = "idle"
                return   # superseded meanwhile: the newest target next
            folder: Path | None = self.versions.materialize(version)
        else:
            folder = None
        self.phase = "checking"
        try:
            candidate = activator.candidate(folder)
            sets = [([candidate.resolve(p) for p in bus.databases], bus.strict) for bus in candidate.buses]
            failure = await probe(sets, timeout_s=settings.parse_timeout_s, memory_mb=settings.parse_memory_mb)
            if failure is not None:
                log.warning("remote_databases_unparsable", file=str(failure.path), line=failure.line,
                            error=failure.reason[:200])
                raise Refused(self._name_of(failure.path, folder, failure.line, failure.reason))
            await asyncio.to_thread(_parse_all, sets)   # the swap below finds them parsed (cache)
            if self.target is not target:
                self.phase = "idle"
                return   # the cloud sent another version meanwhile: that one next
            before = buses.known_ids()
            activator.activate(folder)
        except Refused as exc:
            if self.target is not target:   # superseded while it was checked: not this one's news
                log.info("remote_databases_check_stopped", version=doc.version if doc else None, reason="superseded")
                self.phase = "idle"
                return
            self._refuse(doc, av, str(exc))
            return
        self.versions.activated(version)
        self.state.last_error = None
        self.counters["activations"] += 1
        self.target = None
        self.phase = "idle"
        self.progress = (0, 0)
        if version is None:
            self.state.known_good = None
            self.watch = None
            self._pass(buses, {})
            self._set_ack(200, av, "local database files", None)
            log.info("remote_databases_local")
        else:
            after = buses.known_ids()
            self._pass(buses, {bus: dropped for bus, ids in before.items() if (dropped := ids - after.get(bus, set()))})
            snap = _snapshot(buses.counters)
            self.watch = Watch(version, time.monotonic(), snap, self._before(snap))
            self._set_ack(200, av, f"version {version.version} active", doc.redacted() if doc else None)
            log.info("remote_databases_active", version=version.version, files=version.files)
        self.versions.keep_recent()
        self.versions.save()

    async def _download(self, target: tuple[DatabasesDocument | None, int | None], doc: DatabasesDocument,
                        policy: Policy, settings: RemoteDatabasesConfig) -> bool:
        """Every file of the target's document `doc` in the content store: True; False after a refusal,
        a failed round or when a newer target superseded it (then nothing is said about this one)."""
        av = target[1]
        self.phase = "downloading"
        self._cancel = cancel = threading.Event()
        total = sum(f.size for f in doc.files)
        done = 0
        for f in doc.files:
            def progress(have: int, _: int, before: int = done) -> None:
                self.progress = (before + have, total)
            if self.target is not target:
                self.phase = "idle"
                return False
            try:
                stored = self.versions.blobs.verified(f.sha256, f.size)
                if stored is None:
                    await fetch_async(f.spec(), self.versions.blobs.root, policy, progress=progress, cancel=cancel)
                    self.counters["downloads"] += 1
                    self.counters["downloaded_bytes"] += f.size
            except DownloadError as exc:
                if self.target is not target:   # cancelled, or failed as it was superseded: not this one's news
                    log.info("remote_databases_download_stopped", version=doc.version, file=f.name,
                             reason="superseded")
                    self.phase = "idle"
                    return False
                why = f"{f.name} ({redact(f.url)}): {exc}"
                if exc.retryable or exc.kind in LOCAL:
                    self.counters["download_failures"] += 1
                    self._rounds += 1
                    delay = backoff_delay(self._rounds, RETRY_INITIAL_S, settings.retry_max_s)
                    self._retry_at = time.monotonic() + delay
                    self.phase = "waiting"
                    self.state.last_error = why
                    log.warning("remote_databases_download_failed", version=doc.version, file=f.name, error=str(exc),
                                retry_in_s=round(delay, 1))
                    self._set_ack(202, av, f"version {doc.version}: download failed, retrying in {delay:.0f} s: "
                                           f"{f.name}: {exc}", doc.redacted())
                else:
                    self._refuse(doc, av, f"{f.name}: {exc}")
                return False
            done += f.size
            self.progress = (done, total)
        return True

    @staticmethod
    def _name_of(path: Path | None, folder: Path | None, line: int, reason: str) -> str:
        """A parse failure as the cloud may see it: the file's name in the version, its line, a reason."""
        if path is None:
            return reason
        name = path.name
        if folder is not None:
            try:
                name = str(path.relative_to(folder))
            except ValueError:
                pass
        why = "not a database cantools can read" if "already defined" not in reason else \
            "a frame id defined in two of the bus's databases"
        return f"{name}{f':{line}' if line else ''}: {why}"

    # ------------------------------------------------------------------ the watch
    def _before(self, snap: dict[str, tuple[int, int, int]]) -> dict[str, tuple[float, float]]:
        """Each bus's shares over the baseline window before the swap."""
        if not self.history:
            return {}
        oldest = self.history[0][1]
        out = {}
        for bus, now in snap.items():
            frames, unknown, errors = _shares(now, oldest.get(bus, (0, 0, 0)))
            out[bus] = (unknown, errors) if frames else (0.0, 0.0)
        return out

    def _judge(self, settings: RemoteDatabasesConfig, snap: dict[str, tuple[int, int, int]],
               activator: Activator, buses: Buses) -> None:
        watch = self.watch
        assert watch is not None
        if not watch.at_swap:   # on probation after a restart: from now on
            watch.at_swap, watch.before = snap, self._before(snap)
            return
        settled = True
        for bus, now in snap.items():
            frames, unknown, errors = _shares(now, watch.at_swap.get(bus, (0, 0, 0)))
            before_unknown, before_errors = watch.before.get(bus, (0.0, 0.0))
            if frames >= JUDGE_MIN_FRAMES:
                for what, after, before in (("unknown ids", unknown, before_unknown),
                                             ("decode errors", errors, before_errors)):
                    if after - before > settings.jump:
                        self._pass(buses, {})
                        self._roll_back(activator, f"bus {bus}: {what} {after:.0%} of {frames} frames since the "
                                                   f"swap (before: {before:.0%})")
                        return
            if 0 < frames < settings.watch_frames:
                settled = False
        if settled and any(now[0] > watch.at_swap.get(b, (0, 0, 0))[0] for b, now in snap.items()) \
                or time.monotonic() - watch.started > settings.watch_max_s:
            self.state.known_good = watch.version
            self.watch = None
            self._pass(buses, {})
            log.info("remote_databases_known_good", version=watch.version.version)
            self.versions.save()

    def _pass(self, buses: Buses, ids: dict[str, set[int]]) -> None:
        """The watch's extra receive-filter ids, applied and kept in the state (saved by the caller)."""
        buses.pass_ids(ids)
        self.state.watch_ids = {bus: sorted(i) for bus, i in ids.items()}

    def _roll_back(self, activator: Activator, why: str) -> None:
        watch = self.watch
        assert watch is not None
        self.watch = None
        good = self.state.known_good
        folder = self.versions.folder(good.key) if good is not None else None
        try:
            activator.activate(folder)
        except Refused as exc:
            self.state.last_error = f"rollback of {watch.version.version} failed: {exc}"
            log.error("remote_databases_rollback_failed", version=watch.version.version, reason=str(exc))
            self.versions.save()
            return
        self.versions.activated(good)
        self.state.refused[watch.version.key] = f"rolled back: {why}"
        self.state.last_error = f"version {watch.version.version} rolled back: {why}"
        self.counters["rollbacks"] += 1
        log.warning("remote_databases_rolled_back", version=watch.version.version, reason=why,
                    to=good.version if good else "local files")
        av = self.ack.get("av") if self.ack else None
        self._set_ack(400, av, f"version {watch.version.version} rolled back: {why}",
                      self.ack.get("value") if self.ack else None)
        self.versions.keep_recent()
        self.versions.save()


def _parse_all(sets: list[tuple[list[Path], bool]]) -> None:
    for paths, strict in sets:
        load_databases(paths, strict=strict)
