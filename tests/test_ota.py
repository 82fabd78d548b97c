"""Software updates end to end (marker `ota`): the real agent process with a replayed vehicle, the
desired document through the local control channel, images from an HTTPS server, and the real
installers: a command, RAUC's service on a private D-Bus, swupdate on its IPC sockets.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.twin.local import read_reported, write_desired
from tests.conftest import run_cli, start_logged_agent, wait_for
from tests.ota_harness import Device, Rauc, Signer, Swupdate, kill, stop

pytestmark = pytest.mark.ota


class Run:
    """One agent process of a device, its log events and its status."""

    def __init__(self, dev: Device, env: dict[str, str] | None = None) -> None:
        self.dev = dev
        self.proc, self.lines, self.reader = start_logged_agent(dev.config, env)

    def events(self, name: str = "ota_state") -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == name:
                out.append(doc)
        return out

    def states(self) -> list[str]:
        return [e["to"] for e in self.events()]

    def update(self) -> dict[str, Any]:
        try:
            return json.loads((self.dev.state / "status.json").read_text()).get("software_update") or {}
        except (OSError, ValueError):
            return {}

    def reached(self, state: str, timeout: float = 60) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {''.join(self.lines[-20:])}")
            hits = [e for e in self.events() if e["to"] == state]
            return hits[-1] if hits else None
        try:
            return wait_for(seen, timeout, 0.05, f"ota state {state}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; states seen: {self.states()}; the agent's last log lines:\n"
                                 + "".join(self.lines[-10:])) from None

    def stop(self) -> None:
        stop(self.proc)
        self.reader.join(5)

    def kill(self) -> None:
        kill(self.proc)
        self.reader.join(5)


@pytest.fixture
def make_device() -> Iterator[Callable[..., Device]]:
    """Devices made by a test; their image servers are closed after it."""
    made: list[Device] = []

    def make(tmp: Path, **kwargs: Any) -> Device:
        made.append(Device(tmp, **kwargs))
        return made[-1]
    yield make
    for dev in made:
        dev.close()


@pytest.fixture
def device(tmp_path: Path, make_device: Callable[..., Device]) -> Device:
    return make_device(tmp_path)


def desire(dev: Device, update: dict[str, Any] | None, version: int) -> None:
    write_desired(dev.state, {"$version": version, "software_update": update})


def reboot(dev: Device, boot: int, version: str) -> None:
    """What a reboot changes as the agent sees it: a new boot id, the software version that booted."""
    dev.boot_id.write_text(f"boot-{boot}\n")
    dev.version_file.write_text(f"{version}\n")


# ------------------------------------------------------------------------------------------ command backend
def test_command_update_installs_reboots_and_is_confirmed(device: Device) -> None:
    """The happy path: every state in order, the installer got the verified image, the reboot was asked
    for, and after it the new version runs: succeeded, reported to the cloud."""
    payload = os.urandom(300_000)
    device.image("app-2.0.bin", payload)
    desire(device, device.update("u-1", "app-2.0.bin", reboot="now"), 1)
    run = Run(device)
    try:
        run.reached("rebooting")
        assert device.installed.read_bytes() == payload
        wait_for(lambda: device.reboots.exists(), 20, what="the reboot command")
        assert run.states() == ["downloading", "verifying", "waiting_guard", "installing",
                                "installed_pending_reboot", "rebooting"]
        assert not [line for line in run.lines if "sig=secret" in line]   # the URL's SAS query is never logged
    finally:
        run.stop()
    reboot(device, 2, "2.0")
    run = Run(device)
    try:
        done = run.reached("succeeded")
        assert done["update_id"] == "u-1" and done["error"] is None
        state = wait_for(lambda: (r := read_reported(device.state).get("software_update_state")) and
                         r.get("state") == "succeeded" and r, 30, what="reported succeeded")
        assert state["installed_version"] == "2.0" and state["id"] == "u-1" and state["progress_percent"] == 100
        assert device.installs.read_text().count("\n") == 1   # installed once
    finally:
        run.stop()


def test_wrong_hash_never_reaches_the_installer(device: Device) -> None:
    device.image("app.bin", os.urandom(100_000))
    wrong = "0" * 64
    desire(device, device.update("u-hash", "app.bin", sha256=wrong), 1)  # validly signed, wrong bytes
    run = Run(device)
    try:
        failed = run.reached("failed")
        assert "sha256 mismatch" in failed["error"]
        assert run.states() == ["downloading", "failed"]
        assert not device.installs.exists()
        assert not [p for p in (device.state / "ota" / "images").rglob("*") if p.is_file()]  # partial removed too
    finally:
        run.stop()


def test_bad_signature_is_refused_before_downloading(device: Device, tmp_path: Path) -> None:
    device.image("app.bin", os.urandom(100_000))
    other = Signer(tmp_path, "attacker")
    desire(device, device.update("u-sig", "app.bin", signer=other), 1)
    run = Run(device)
    try:
        failed = run.reached("failed")
        assert failed["error"].startswith("signature verification failed")
        assert device.server.requests == []   # not even downloaded
        assert not device.installs.exists()
    finally:
        run.stop()


def test_guard_not_met_then_met(tmp_path: Path, make_device: Callable[..., Device]) -> None:
    """Driving for 4 s: the update waits and says for what; parked with the brake on for the hold
    time: installed."""
    dev = make_device(tmp_path, moving_s=4.0)
    dev.image("app.bin", os.urandom(50_000))
    desire(dev, dev.update("u-guard", "app.bin", guard="VehicleSpeed == 0 and ParkingBrake == 1",
                           reboot="when_guard"), 1)
    run = Run(dev)
    try:
        waiting = wait_for(lambda: (u := run.update()).get("state") == "waiting_guard" and
                           "false" in (u.get("waiting_for") or "") and u, 30, what="waiting for the guard")
        assert waiting["waiting_for"] == "guard VehicleSpeed == 0 and ParkingBrake == 1: false"
        assert not dev.installs.exists()
        run.reached("installing", 30)
        run.reached("installed_pending_reboot")
        run.reached("rebooting")   # when_guard: once the guard held again
        wait_for(lambda: dev.reboots.exists(), 20, what="the reboot command")
        waits = [e["waiting_for"] for e in run.events("ota_waiting")]
        assert any(w.startswith("guard ") and " held " in w for w in waits)   # it counted the hold time
        # when_guard: the guard held on through the install, so the reboot followed without a new wait
    finally:
        run.stop()


def test_an_image_changed_on_disk_while_waiting_is_refused(tmp_path: Path, make_device: Callable[..., Device]) -> None:
    """Verified again right before the installer gets it: bytes changed during the wait never reach it."""
    dev = make_device(tmp_path, moving_s=3.0)
    dev.image("app.bin", os.urandom(50_000))
    update = dev.update("u-tamper", "app.bin", guard="ParkingBrake == 1")
    desire(dev, update, 1)
    run = Run(dev)
    try:
        run.reached("waiting_guard")
        (dev.state / "ota" / "images" / update["sha256"]).write_bytes(os.urandom(50_000))
        failed = run.reached("failed", 30)
        assert failed["error"].startswith("sha256 mismatch")
        assert "installing" not in run.states() and not dev.installs.exists()
    finally:
        run.stop()


def test_kill_during_download_resumes(device: Device) -> None:
    payload = os.urandom(1_500_000)
    device.image("big.bin", payload)
    device.server.behave("/big.bin", bytes_per_s=300_000)   # ~5 s
    desire(device, device.update("u-dl", "big.bin", reboot="never"), 1)
    run = Run(device)
    try:
        wait_for(lambda: run.update().get("state") == "downloading" and run.update().get("bytes", 0) > 200_000,
                 30, what="a download under way")
    finally:
        run.kill()
    device.server.behave("/big.bin")
    run = Run(device)
    try:
        run.reached("installed_pending_reboot")
        ranges = [r.range for r in device.server.requests if r.range]
        assert ranges and int(ranges[-1].split("=")[1].rstrip("-")) > 200_000   # resumed, not from zero
        assert device.installed.read_bytes() == payload
    finally:
        run.stop()


def _killed_during_install(device: Device, update_id: str) -> bytes:
    """An update whose 3 s install is under way when the agent is SIGKILLed; the image's bytes."""
    payload = os.urandom(10_000)
    device.image("app.bin", payload)
    desire(device, device.update(update_id, "app.bin", reboot="never"), 1)
    run = Run(device, env={"OTA_TEST_INSTALL_S": "3"})
    try:
        run.reached("installing")
        wait_for(lambda: device.installs.exists(), 10, what="the installer started")
    finally:
        run.kill()
    return payload


def test_kill_during_install_reports_the_installers_result(device: Device) -> None:
    """The installer outlives the agent; the restarted agent waits for it and reports its result. It
    ran once."""
    payload = _killed_during_install(device, "u-inst")
    run = Run(device)
    try:
        run.reached("installed_pending_reboot", 30)
        assert run.events("ota_install_resumed")
        assert device.installed.read_bytes() == payload
        assert device.installs.read_text().count("\n") == 1
        assert wait_for(lambda: run.update().get("waiting_for") == "a reboot (reboot: never)", 10)
    finally:
        run.stop()


def test_kill_before_the_installers_pid_was_saved_still_installs_once(device: Device) -> None:
    """A loaded unit can be killed after the installer started but before its pid reached the state
    file: the restarted agent finds the installer by the wrapper's own pid file, waits for it and
    reports its result, and never starts it a second time."""
    payload = _killed_during_install(device, "u-early")
    (state_file,) = [p for p in device.state.rglob("state.json") if b'"installer"' in p.read_bytes()]
    saved = json.loads(state_file.read_text())
    assert saved["state"] == "installing" and saved["installer"].get("pid")
    saved["installer"] = {}  # what the disk holds when the kill came before the pid was noted
    state_file.write_text(json.dumps(saved))
    run = Run(device)
    try:
        run.reached("installed_pending_reboot", 30)
        assert device.installed.read_bytes() == payload
        assert device.installs.read_text().count("\n") == 1, "the installer ran twice"
    finally:
        run.stop()


def test_outside_the_install_window_it_waits(device: Device) -> None:
    later = datetime.now() + timedelta(hours=2)
    window = f"{later:%H}:00-{(later + timedelta(hours=1)):%H}:00"
    device.image("app.bin", os.urandom(10_000))
    desire(device, device.update("u-win", "app.bin", install_window=window), 1)
    run = Run(device)
    try:
        waiting = wait_for(lambda: (u := run.update()).get("state") == "waiting_guard" and u, 30)
        assert waiting["waiting_for"] == f"install window {window} (local time)"
        assert not device.installs.exists()
    finally:
        run.stop()


def test_a_failing_reboot_command_is_reported(device: Device) -> None:
    device.ota["reboot_command"] = ["/bin/false"]
    device.write_config()
    device.image("app.bin", os.urandom(10_000))
    desire(device, device.update("u-noboot", "app.bin", reboot="now"), 1)
    run = Run(device)
    try:
        run.reached("rebooting")
        back = wait_for(lambda: [e for e in run.events() if e["from"] == "rebooting"], 20,
                        what="back from rebooting")   # the command failed: still pending, saying why
        assert back[-1]["to"] == "installed_pending_reboot"
        assert back[-1]["error"] == "reboot command failed: exit code 1"
        assert run.events("ota_reboot_failed")[0]["retry_s"] == 60.0   # tried again later, not at once
    finally:
        run.stop()


def test_failing_installer_is_reported(device: Device) -> None:
    device.ota["command"] = {"argv": ["/bin/sh", "-c", "echo 'no space left on /dev/mmcblk0p3' >&2; exit 3", "sh"]}
    device.write_config()
    device.image("app.bin", os.urandom(10_000))
    desire(device, device.update("u-fail", "app.bin"), 1)
    run = Run(device)
    try:
        failed = run.reached("failed")
        assert failed["error"] == "install: installer exited with 3: no space left on /dev/mmcblk0p3"
    finally:
        run.stop()


def test_cancel_from_the_cloud_and_the_same_id_is_never_installed(tmp_path: Path, make_device: Callable[..., Device]) -> None:
    dev = make_device(tmp_path, moving_s=600.0)   # never parked: the guard holds the update
    dev.image("app.bin", os.urandom(10_000))
    update = dev.update("u-cancel", "app.bin", guard="VehicleSpeed == 0")
    desire(dev, update, 1)
    run = Run(dev)
    try:
        run.reached("waiting_guard")
        wanted = "software update u-cancel (2.0, command): waiting_guard, waiting for guard VehicleSpeed == 0: false"
        wait_for(lambda: wanted in run_cli("status", "--config", str(dev.config)).stdout, 30,
                 what="vehicle-agent status showing the wait")
        desire(dev, {**update, "cancel": True}, 2)
        failed = run.reached("failed")
        assert failed["error"] == "cancelled from the cloud"
        desire(dev, update, 3)   # asked again under the same id: not started again
        wait_for(lambda: read_reported(dev.state).get("software_update", {}).get("av") == 3, 20,
                 what="version 3 acknowledged")
        other = dev.update("u-other", "app.bin", signer=Signer(tmp_path, "other"))
        desire(dev, other, 4)    # another update in between (refused: not signed by the device's key)
        wait_for(lambda: run.update().get("id") == "u-other" and run.update().get("state") == "failed", 20)
        desire(dev, update, 5)   # and the cancelled one once more: still not started
        declined = wait_for(lambda: [e for e in run.events("ota_update_declined") if e["update_id"] == "u-cancel"],
                            20, what="the update declined")
        assert declined[-1]["reason"] == "this id already ended: failed"
        assert run.states() == ["downloading", "verifying", "waiting_guard", "failed", "failed"]
        assert run.update()["id"] == "u-other"
        assert not dev.installs.exists()
    finally:
        run.stop()


def test_cancel_during_the_download(device: Device) -> None:
    device.image("big.bin", os.urandom(1_500_000))
    device.server.behave("/big.bin", bytes_per_s=200_000)
    update = device.update("u-dl-cancel", "big.bin")
    desire(device, update, 1)
    run = Run(device)
    try:
        wait_for(lambda: run.update().get("state") == "downloading" and run.update().get("bytes", 0) > 0, 30,
                 what="a download under way")
        desire(device, None, 2)   # the property removed: the same as cancel before installing
        failed = run.reached("failed")
        assert failed["error"] == "cancelled from the cloud"
        assert not [p for p in (device.state / "ota" / "images").rglob("*") if p.is_file()]  # partial removed
        assert not device.installs.exists()
    finally:
        run.stop()


def test_a_guard_naming_an_unknown_signal_is_refused(device: Device) -> None:
    device.image("app.bin", b"x" * 10)
    desire(device, device.update("u-bad", "app.bin", guard="Speed == 0"), 1)
    run = Run(device)
    try:
        ack = wait_for(lambda: read_reported(device.state).get("software_update"), 20, what="the ack")
        assert ack["ac"] == 400 and "software_update.guard: position 1: unknown signal 'Speed'" in ack["ad"]
        assert run.update()["state"] == "idle"
    finally:
        run.stop()


# ------------------------------------------------------------------------------------------ RAUC
@pytest.fixture
def rauc(tmp_path: Path) -> Iterator[Rauc]:
    r = Rauc(tmp_path / "rauc")
    r.start("A")
    yield r
    r.close()


def rauc_device(make_device: Callable[..., Device], tmp_path: Path, rauc: Rauc) -> Device:
    (tmp_path / "dev").mkdir()
    return make_device(tmp_path / "dev", backend="rauc", rauc={"bus_address": rauc.address})


@pytest.mark.parametrize("booted", ["B", "A"])
def test_rauc_install_then_reboot_into_new_or_old_slot(tmp_path: Path, rauc: Rauc, booted: str, make_device: Callable[..., Device]) -> None:
    """RAUC installs the bundle into slot B through D-Bus; a reboot into B with a healthy agent is
    succeeded and B is marked good; a reboot that comes back in A (the bootloader fell back) is rolled_back."""
    dev = rauc_device(make_device, tmp_path, rauc)
    rootfs = os.urandom(1024 * 1024)
    dev.serve(rauc.bundle(dev.www / "update.raucb", rootfs, "2.0"))
    dev.ota.pop("version_file")   # RAUC's slots tell which software runs
    dev.write_config()
    desire(dev, dev.update("r-1", "update.raucb", reboot="now"), 1)
    run = Run(dev)
    try:
        run.reached("rebooting")
        assert rauc.slot("B")[:len(rootfs)] == rootfs
        assert (rauc.dir / "boot" / "primary").read_text().strip() == "B"
        progress = [e for e in run.events("ota_state") if e["to"] == "installed_pending_reboot"]
        assert progress
    finally:
        run.stop()
    rauc.stop()
    rauc.start(booted)
    dev.boot_id.write_text("boot-2\n")
    run = Run(dev)
    try:
        if booted == "B":
            done = run.reached("succeeded")
            assert done["error"] is None
            now = wait_for(lambda: (u := run.update()).get("state") == "succeeded" and u, 10)
            assert now["booted_slot"] == "B" and now["installed_version"] == "2.0"
            assert rauc.boot_state("B") == "good"
        else:
            back = run.reached("rolled_back")
            assert "slot A" in back["error"]
            now = wait_for(lambda: (u := run.update()).get("state") == "rolled_back" and u, 10)
            assert now["booted_slot"] == "A" and now["installed_version"] is None
    finally:
        run.stop()


def test_rauc_kill_during_install(tmp_path: Path, rauc: Rauc, make_device: Callable[..., Device]) -> None:
    """Killed while RAUC installs (slowed by a pre-install handler): the restarted agent follows RAUC
    to its end (still installing: Completed; done meanwhile: the slot holds the bundle's version)."""
    dev = rauc_device(make_device, tmp_path, rauc)
    rauc.slow.touch()
    rootfs = os.urandom(3 * 1024 * 1024)
    dev.serve(rauc.bundle(dev.www / "big.raucb", rootfs, "3.0"))
    desire(dev, dev.update("r-kill", "big.raucb", "3.0", reboot="never"), 1)
    run = Run(dev)
    try:
        run.reached("installing")
    finally:
        run.kill()
    run = Run(dev)
    try:
        run.reached("installed_pending_reboot")
        assert run.events("ota_install_resumed")
        assert rauc.slot("B")[:len(rootfs)] == rootfs
    finally:
        run.stop()


def test_rauc_refuses_a_bundle_signed_by_another_key(tmp_path: Path, rauc: Rauc, make_device: Callable[..., Device]) -> None:
    """Our signature vouches for the file, RAUC's keyring does not: RAUC's own reason is reported."""
    dev = rauc_device(make_device, tmp_path, rauc)
    dev.serve(rauc.bundle(dev.www / "evil.raucb", os.urandom(4096), "2.0", evil=True))
    desire(dev, dev.update("r-evil", "evil.raucb"), 1)
    run = Run(dev)
    try:
        failed = run.reached("failed")
        assert failed["error"].startswith("install: RAUC: ") and "signature" in failed["error"]
        assert rauc.slot("B") == b"\0" * 4 * 2**20
    finally:
        run.stop()


# ------------------------------------------------------------------------------------------ SWUpdate
@pytest.fixture
def swupdate(tmp_path: Path) -> Iterator[Swupdate]:
    s = Swupdate(tmp_path / "swu")
    yield s
    s.close()


@pytest.mark.parametrize("corrupt", [False, True])
def test_swupdate_streams_the_image(tmp_path: Path, swupdate: Swupdate, corrupt: bool, make_device: Callable[..., Device]) -> None:
    (tmp_path / "dev").mkdir()
    dev = make_device(tmp_path / "dev", backend="swupdate", swupdate={"socket_dir": str(swupdate.dir)})
    payload = os.urandom(512 * 1024)
    dev.serve(swupdate.swu(dev.www / "app.swu", payload, "2.0", corrupt=corrupt))
    desire(dev, dev.update("s-1", "app.swu", reboot="never"), 1)
    run = Run(dev)
    try:
        if not corrupt:
            run.reached("installed_pending_reboot")
            assert swupdate.target.read_bytes() == payload
        else:
            failed = run.reached("failed")
            assert failed["error"].startswith("install: SWUpdate: ") and "HASH mismatch" in failed["error"]
            assert not swupdate.target.exists() or swupdate.target.read_bytes() != payload
    finally:
        run.stop()


def test_harness_programs_present() -> None:
    """The OTA suite needs the real installers (.ci/run installs them)."""
    for program in ("rauc", "swupdate", "dbus-daemon", "cpio", "openssl"):
        assert subprocess.run(["which", program], capture_output=True).returncode == 0, f"{program} missing"


def test_the_ack_never_repeats_the_image_urls_query(device: Device) -> None:
    """The ack echoes the desired value; the image URL's query is a SAS token (a secret): the echo has
    the URL without it, as the databases' ack does, and neither reported.json nor status carries it."""
    device.image("app.bin", os.urandom(10_000))
    update = device.update("u-echo", "app.bin", reboot="never")
    desire(device, update, 1)
    run = Run(device)
    try:
        ack = wait_for(lambda: read_reported(device.state).get("software_update"), 20, what="the ack")
        assert ack["value"]["url"] == update["url"].split("?")[0] and ack["value"]["id"] == "u-echo"
        run.reached("installed_pending_reboot")
        wait_for(lambda: (device.state / "status.json").exists(), 20, what="status")
        for text in ((device.state / "control" / "reported.json").read_text(),
                     (device.state / "status.json").read_text()):
            assert "sig=secret" not in text
    finally:
        run.stop()


@pytest.mark.parametrize(("rotten", "why", "error"), [
    (b'{"id": "u-rot", "state": "installing", "bytes": {"nested": 1}, "changed": null}', "field 'bytes'",
     "whether the install ran is unknown"),
    (b'{"id": "u-rot", "state": "installi', "not JSON", "not installed: the OTA state file was damaged"),
])
def test_a_rotten_state_file_at_start_is_set_aside_and_installs_nothing_twice(device: Device, rotten: bytes,
                                                                              why: str, error: str) -> None:
    """A state file of the wrong types (or cut short) from while u-rot was installing: the agent runs,
    status counts it, the file is moved aside, and u-rot (still desired) ends failed instead of
    installing again (the cloud sends a new id to install it)."""
    device.image("app.bin", os.urandom(10_000))
    desire(device, device.update("u-rot", "app.bin"), 1)
    folder = device.state / "ota"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_bytes(rotten)
    run = Run(device)
    try:
        failed = run.reached("failed")
        assert failed["update_id"] == "u-rot" and error in failed["error"]
        event = wait_for(lambda: run.events("ota_state_unreadable"), 20, what="the damaged file logged")[0]
        assert event["file"] == str(folder / "state.json") and why in event["error"]
        wait_for(lambda: run.update().get("state_damaged") == 1, 20, what="status counting the damaged file")
        assert "state file found damaged at start: 1" in run_cli("status", "--config", str(device.config)).stdout
        assert (folder / "state.damaged").read_bytes() == rotten
        assert run.states() == ["failed"] and not device.installs.exists()
    finally:
        run.stop()
