"""The update orchestrator: one desired `software_update` through download, verification, the
vehicle's guard, the installer, the reboot and its confirmation (agent/ota/state.py has the states).

One task on the agent's loop; downloads and hashing run in worker threads. It acts only on what
is persisted first, so a restart at any point continues: a download resumes, a wait starts over, an
install interrupted by the agent's death is followed to its end or read back from the installer, and
a reboot is confirmed (the new software runs and the agent is healthy: succeeded, marked good) or
seen undone by the bootloader (rolled_back).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from agent.liveness import beat, wait_first
from agent.ota.backend import Backend, InstallError
from agent.ota.command import CommandBackend
from agent.ota.model import OtaConfig, SoftwareUpdate, install_window, signature_bytes
from agent.ota.state import BEFORE_INSTALL, FINAL, StateFile, UpdateState
from agent.ota.verify import VerifyError, check_signature, load_keys, verify_image

log = structlog.get_logger()

TICK_S = 0.25
REBOOT_RETRY_S = 60.0   # a reboot command that failed is tried again after this
IMAGES = "images"
WatchView = Callable[[], Any]   # the engine's Watch of the guard (latched, falls, missing()), or None


class Cancelled(Exception):
    """The desired update changed while this step ran."""


def in_window(text: str | None, now: datetime) -> bool:
    """Is local time `now` inside `HH:MM-HH:MM` (which may run across midnight)? None: always."""
    if text is None:
        return True
    start, end = install_window(text)
    t = now.time().replace(second=0, microsecond=0)
    return start <= t < end if start < end else (t >= start or t < end)


class GuardClock:
    """How long the guard has held without a break, from polling the engine's watch."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.falls = -1

    def held_s(self, watch: Any) -> float | None:
        """Seconds it has held (None: false now, or no signal yet)."""
        if watch is None or not watch.latched:
            self.since = None
            return None
        if self.since is None or watch.falls != self.falls:
            self.since, self.falls = time.monotonic(), watch.falls
        return time.monotonic() - self.since


class Updater:
    """Drives `software_update`; `configure` with each applied config, `run` as a supervised task."""

    def __init__(self, ota: OtaConfig, folder: Path, resolve: Callable[[str], Path], *, guard: WatchView,
                 healthy: Callable[[], bool], on_change: Callable[[], None] = lambda: None) -> None:
        self.folder = folder
        self.resolve = resolve
        self.guard = guard
        self.healthy = healthy
        self.on_change = on_change
        self.file = StateFile(folder, ota.report_interval_s)
        self.st: UpdateState = self.file.load()
        self.ota = ota
        self.desired: SoftwareUpdate | None = None
        self.wake = asyncio.Event()
        self.clock = GuardClock()
        self.errors = 0
        self._declined: str | None = None

    # ----------------------------------------------------------------- inputs
    def configure(self, ota: OtaConfig, desired: SoftwareUpdate | None) -> None:
        self.ota, self.desired = ota, desired
        self.file.interval = ota.report_interval_s
        self.wake.set()

    def report(self) -> dict[str, Any]:
        return {**self.st.report(), "state_write_errors": self.file.write_errors,
                "state_damaged": self.file.damaged, "errors": self.errors}

    def backend(self, name: str | None) -> Backend:
        if name == "rauc":
            from agent.ota.rauc import RaucBackend  # dbus-fast is imported only when RAUC is used
            return RaucBackend(self.ota.rauc.bus_address)
        if name == "swupdate":
            from agent.ota.swupdate import SwupdateBackend
            return SwupdateBackend(self.resolve(self.ota.swupdate.socket_dir))
        return CommandBackend(self.ota.command.argv, self.folder, self.ota.command.timeout_s)

    def boot_id(self) -> str | None:
        try:
            return self.resolve(self.ota.boot_id_file).read_text().strip()[:64] or None
        except OSError:
            return None

    def image(self) -> Path:
        """Where the downloader keeps the image (named by its sha256)."""
        return self.folder / IMAGES / (self.st.sha256 or "none")

    # ----------------------------------------------------------------- transitions
    def to(self, state: Any, **changes: Any) -> None:
        self.file.to(state, **changes)
        self.st = self.file.state
        self.on_change()

    def fail(self, why: str) -> None:
        self.to("failed", error=why)
        self._drop_image()

    def _drop_image(self) -> None:
        """Images (and partial downloads) are kept only while an update needs them."""
        from agent.download import ContentStore

        ContentStore(self.folder / IMAGES).keep_only(set())

    def _check_desired(self) -> None:
        """Raise Cancelled when the desired update no longer is the one in progress (before installing)."""
        d = self.desired
        if d is None or d.id != self.st.id or d.cancel:
            raise Cancelled

    # ----------------------------------------------------------------- the loop
    async def run(self, stop: asyncio.Event) -> None:
        """Until stop: take the desired update through its states; a step's bug is logged, counted, retried."""
        while not stop.is_set():
            beat()
            try:
                await self.step(stop)
            except Exception as exc:  # noqa: BLE001 - the updater must outlive one bad step
                self.errors += 1
                log.exception("ota_step_failed", state=self.st.state, error=repr(exc))
                await self._sleep(stop, 5.0)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        self.wake.clear()
        await wait_first(stop, self.wake, timeout=seconds)

    async def step(self, stop: asyncio.Event) -> None:
        st, d = self.st, self.desired
        if st.state in ("rebooting", "installed_pending_reboot") and st.boot_id and self.boot_id() != st.boot_id:
            await self.confirm(stop)
            return
        if st.state in BEFORE_INSTALL:
            if d is None or d.id != st.id or d.cancel:
                why = "cancelled from the cloud" if d is None or d.cancel else f"superseded by update {d.id}"
                self.fail(why)
                return
        if st.state == "installing":
            await self.resume_install(stop)
            return
        if st.state == "installed_pending_reboot":
            await self.pending_reboot(stop)
            return
        if st.state == "rebooting":
            self.file.note(waiting_for="the reboot")
            await self._sleep(stop, 5.0)
            return
        if st.state == "downloading":
            await self.download(stop)
            return
        if st.state == "verifying":
            await self.verify()
            return
        if st.state == "waiting_guard":
            await self.wait_guard(stop)
            return
        # idle or final: start the desired update if it is new
        if self.file.unknown and d is not None and not d.cancel and d.id not in st.done:
            self.decline_unknown(d)
            return
        if d is not None and not d.cancel and d.id != st.id and d.id not in st.done:
            self.start(d)
            return
        if d is not None and d.id != st.id and d.id in st.done and d.id != self._declined:
            self._declined = d.id   # said once: an id is installed at most once, the cloud must use a new one
            log.warning("ota_update_declined", update_id=d.id, reason=f"this id already ended: {st.done[d.id]}")
        await self._sleep(stop, 5.0)

    def decline_unknown(self, d: SoftwareUpdate) -> None:
        """The state file was damaged and named no update: `d` may be the one it was installing. It ends
        `failed` instead of installing (perhaps twice); the cloud installs it by sending a new id."""
        self.file.unknown = False
        self.file.state = UpdateState(done=self.st.done, id=d.id, version=d.version, backend=d.backend,
                                      size=d.size, sha256=d.sha256)
        self.fail("not installed: the OTA state file was damaged, so whether this update already ran is "
                  "unknown; send it with a new id to install it")

    def start(self, d: SoftwareUpdate) -> None:
        self._drop_image()
        self.file.state = UpdateState(done=self.st.done, id=d.id, version=d.version, backend=d.backend,
                                      size=d.size, sha256=d.sha256)
        log.info("ota_update_started", update_id=d.id, version=d.version, backend=d.backend, size=d.size)
        try:  # the signature first: nothing the device's keys do not vouch for is even downloaded
            check_signature(load_keys([self.resolve(p) for p in self.ota.public_keys]), signature_bytes(d.signature),
                            version=d.version, sha256=d.sha256, size=d.size)
        except VerifyError as exc:
            self.fail(str(exc))
            return
        self.to("downloading")

    # ----------------------------------------------------------------- download and verify
    async def download(self, stop: asyncio.Event) -> None:
        from agent.download import DownloadError, FileSpec, Policy, fetch_async

        d = self.desired
        assert d is not None
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:  # from the download thread
            loop.call_soon_threadsafe(self._progress, done, total)

        policy = Policy(max_bytes=self.ota.max_bytes, ca_file=self.resolve(self.ota.ca_file) if self.ota.ca_file else None)
        task = asyncio.ensure_future(fetch_async(FileSpec(d.url, d.sha256, d.size), self.folder / IMAGES, policy,
                                                 progress=progress))
        try:
            while not task.done():
                beat()
                await asyncio.wait({task}, timeout=TICK_S)
                if stop.is_set():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, DownloadError):
                        await task
                    return
                self._check_desired()
            task.result()
        except Cancelled:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, DownloadError):
                await task
            return  # the next step sees why
        except DownloadError as exc:
            self.fail(f"download: {exc}")
            return
        self.to("verifying", bytes=d.size, progress_percent=100)

    def _progress(self, done: int, total: int) -> None:
        self.file.progress(done, total)

    async def verify(self) -> bool:
        """The image against the signature, sha256 and size; False (and failed) if it does not match."""
        d = self.desired
        assert d is not None
        try:
            keys = load_keys([self.resolve(p) for p in self.ota.public_keys])
            await asyncio.to_thread(verify_image, self.image(), version=d.version, sha256=d.sha256, size=d.size,
                                    signature=signature_bytes(d.signature), keys=keys)
        except VerifyError as exc:
            self.fail(str(exc))
            return False
        if self.st.state == "verifying":
            self.to("waiting_guard")
        return True

    # ----------------------------------------------------------------- the vehicle's permission
    def waiting_for(self, d: SoftwareUpdate, *, window: bool) -> str | None:
        """What the update waits for (window, guard and how long it held), or None when it may go."""
        if window and not in_window(d.install_window, datetime.now()):
            return f"install window {d.install_window} (local time)"
        if not d.guard:
            return None
        watch = self.guard()
        held = self.clock.held_s(watch)
        hold = self.ota.guard_hold_s
        if held is not None and held >= hold:
            return None
        if watch is not None and watch.missing():
            return f"guard {d.guard}: no value yet of {', '.join(watch.missing()[:4])}"
        if held is None:
            return f"guard {d.guard}: false"
        return f"guard {d.guard}: held {held:.0f} of {hold:g} s"

    async def wait_guard(self, stop: asyncio.Event) -> None:
        d = self.desired
        assert d is not None
        waits = self.waiting_for(d, window=True)
        if waits is None:
            await self.install(stop)
            return
        self.file.note(waiting_for=waits)
        self.on_change()
        await self._sleep(stop, TICK_S)

    # ----------------------------------------------------------------- install
    async def install(self, stop: asyncio.Event) -> None:
        d = self.desired
        assert d is not None
        if not await self.verify():  # again, right before: the file waited on disk
            return
        backend = self.backend(d.backend)
        self.to("installing", progress_percent=0, bytes=0, installer={})
        await self._install(backend, d.version)

    async def _install(self, backend: Backend, version: str) -> None:
        try:
            await backend.install(self.image(), version, self.file.note, self._progress)
            slot = await backend.target_slot()
        except InstallError as exc:
            self.fail(f"install: {exc}")
            return
        finally:
            await backend.close()
        self.to("installed_pending_reboot", progress_percent=100, target_slot=slot, boot_id=self.boot_id())
        self._drop_image()

    async def resume_install(self, stop: asyncio.Event) -> None:
        """The agent (re)started with an install under way: follow it, read its result, or start it."""
        st = self.st
        backend = self.backend(st.backend)
        log.info("ota_install_resumed", update_id=st.id, backend=st.backend)
        try:
            outcome = await backend.resume(st.installer, st.version or "")
            if outcome == "installed":
                slot = await backend.target_slot()
        except InstallError as exc:
            await backend.close()
            self.fail(f"install: {exc}")
            return
        if outcome == "installed":
            await backend.close()
            self.to("installed_pending_reboot", progress_percent=100, target_slot=slot, boot_id=self.boot_id())
            self._drop_image()
            return
        d = self.desired
        if d is None or d.id != st.id:
            await backend.close()
            self.fail("install interrupted before it started, and the update is no longer desired")
            return
        if not await self.verify():
            await backend.close()
            return
        await self._install(backend, st.version or "")

    # ----------------------------------------------------------------- reboot and confirmation
    async def pending_reboot(self, stop: asyncio.Event) -> None:
        d = self.desired
        reboot = d.reboot if d is not None and d.id == self.st.id else "never"
        if reboot == "never":
            self.file.note(waiting_for="a reboot (reboot: never)")
            await self._sleep(stop, 5.0)
            return
        if reboot == "when_guard" and d is not None:
            waits = self.waiting_for(d, window=False)
            if waits is not None:
                self.file.note(waiting_for=f"reboot: {waits}")
                self.on_change()
                await self._sleep(stop, TICK_S)
                return
        if not await self.reboot():
            await self._sleep(stop, REBOOT_RETRY_S)   # not again at once: a broken command must not spin

    async def reboot(self) -> bool:
        """Run the reboot command; False (back to installed_pending_reboot, saying why) if it failed."""
        self.to("rebooting", boot_id=self.boot_id())
        argv = self.ota.reboot_command
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
            rc = await asyncio.wait_for(proc.wait(), 60.0)
        except (OSError, TimeoutError, IndexError) as exc:
            rc, why = -1, f"{type(exc).__name__}"
        else:
            why = f"exit code {rc}"
        if rc != 0:
            log.error("ota_reboot_failed", command=argv[:1], error=why, retry_s=REBOOT_RETRY_S)
            self.to("installed_pending_reboot", error=f"reboot command failed: {why}")
            return False
        log.info("ota_reboot_requested", update_id=self.st.id)
        return True

    async def confirm(self, stop: asyncio.Event) -> None:
        """A new boot after the install: the new software runs (healthy: succeeded) or the old one (rolled_back)."""
        st = self.st
        backend = self.backend(st.backend)
        try:
            booted = await backend.booted()
        except InstallError as exc:
            log.warning("ota_boot_state_unknown", error=str(exc), action="retrying")
            await backend.close()
            await self._sleep(stop, 5.0)
            return
        running = self._running_version()
        if (st.target_slot and booted and booted != st.target_slot) or (running is not None and running != st.version):
            await backend.close()
            what = f"slot {booted}" if booted and st.target_slot else f"version {running}"
            self.to("rolled_back", booted_slot=booted, installed_version=running,
                    error=f"the old software runs after the reboot ({what}): the bootloader fell back")
            return
        self.file.note(booted_slot=booted, waiting_for=f"the agent healthy for {self.ota.confirm_after_s:g} s")
        self.on_change()
        healthy_since = time.monotonic()
        while time.monotonic() - healthy_since < self.ota.confirm_after_s:
            beat()
            if stop.is_set():
                await backend.close()
                return
            if not self.healthy():
                healthy_since = time.monotonic()
            await asyncio.sleep(TICK_S)
        try:
            await backend.mark_good()
        except InstallError as exc:
            await backend.close()
            log.warning("ota_mark_good_failed", error=str(exc), action="retrying")
            await self._sleep(stop, 5.0)
            return
        await backend.close()
        self.to("succeeded", booted_slot=booted, installed_version=st.version, error=None)

    def _running_version(self) -> str | None:
        if not self.ota.version_file:
            return None
        try:
            return self.resolve(self.ota.version_file).read_text().splitlines()[0].strip()[:128] or None
        except (OSError, IndexError):
            return None


__all__ = ["FINAL", "Updater"]
