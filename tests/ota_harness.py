"""Real parts for the OTA tests: signing keys, an HTTPS image server with Range, RAUC's service on a
private D-Bus with file-backed slots and a custom bootloader backend, SWUpdate with its sockets in
a private folder, the agent's config with a replayed vehicle (docs/ota.md; shared/reference/ota-testing.md).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.can.logformats import format_candump
from agent.ota.verify import statement
from tests.https_server import HttpsServer

GUARD_DBC = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 272 VehicleState: 8 ECU
 SG_ VehicleSpeed : 0|16@1+ (0.01,0) [0|655.35] "km/h" ECU
 SG_ ParkingBrake : 16|1@1+ (1,0) [0|1] "" ECU
"""


def vehicle_log(path: Path, *, moving_s: float, parked_s: float, hz: float = 5.0) -> Path:
    """A candump log: driving (speed 30, brake off) for moving_s, then parked (speed 0, brake on)."""
    t0 = time.time()
    lines = []
    n_moving, n_total = int(moving_s * hz), int((moving_s + parked_s) * hz)
    for i in range(n_total):
        moving = i < n_moving
        speed = 3000 if moving else 0
        data = bytes([speed & 0xFF, speed >> 8, 0 if moving else 1, 0, 0, 0, 0, 0])
        lines.append(format_candump(t0 + i / hz, "vcan0", 0x110, data))
    path.write_text("\n".join(lines) + "\n")
    return path


class Signer:
    """An Ed25519 key pair: the public key for the device's config, signatures for the cloud's desired."""

    def __init__(self, folder: Path, name: str = "signer") -> None:
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.public = folder / f"{name}.pub.pem"
        self.public.write_bytes(self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def sign(self, version: str, sha256: str, size: int) -> str:
        return base64.b64encode(self.key.sign(statement(version, sha256, size))).decode()


class Device:
    """One simulated vehicle: its config, keys, image server and the update it is offered."""

    def __init__(self, tmp: Path, *, backend: str = "command", moving_s: float = 0.0, **ota: Any) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.signer = Signer(tmp)
        self.www = tmp / "www"   # where a test makes bundles and archives before serving them
        self.www.mkdir()
        self.server = HttpsServer(tmp / "tls").__enter__()
        (tmp / "guard.dbc").write_text(GUARD_DBC)
        vehicle_log(tmp / "vehicle.log", moving_s=moving_s, parked_s=600)
        self.boot_id = tmp / "boot_id"
        self.boot_id.write_text("boot-1\n")
        self.version_file = tmp / "os-version"
        self.version_file.write_text("1.0\n")
        self.installed = tmp / "installed.bin"
        self.installs = tmp / "installs.txt"
        self.reboots = tmp / "reboots.txt"
        installer = tmp / "install.sh"
        installer.write_text(f'#!/bin/sh\necho "$1" >> {self.installs}\nsleep "${{OTA_TEST_INSTALL_S:-0}}"\n'
                             f'cp "$1" {self.installed}\necho "installed $1"\n')
        installer.chmod(0o755)
        reboot = tmp / "reboot.sh"
        reboot.write_text(f"#!/bin/sh\necho reboot >> {self.reboots}\n")
        reboot.chmod(0o755)
        self.ota = {"public_keys": [str(self.signer.public)], "ca_file": str(self.server.ca_file),
                    "guard_hold_s": 1.0, "confirm_after_s": 1.0, "boot_id_file": str(self.boot_id),
                    "version_file": str(self.version_file), "report_interval_s": 0.2,
                    "reboot_command": [str(reboot)], "command": {"argv": [str(installer), "{file}"]}, **ota}
        self.backend = backend
        self.config = tmp / "agent.yaml"
        self.write_config()

    def write_config(self) -> None:
        self.config.write_text(yaml.safe_dump({
            "vehicle_id": "ota-car", "state_dir": str(self.state), "log_level": "info",
            "buses": [{"name": "body", "databases": [str(self.tmp / "guard.dbc")],
                       "replay": str(self.tmp / "vehicle.log"), "replay_rate": 1.0}],
            "sink": {"type": "file"}, "ota": self.ota}))

    def image(self, name: str, data: bytes) -> None:
        """Serve `data` as /name."""
        self.server.put(f"/{name}", data)

    def serve(self, path: Path) -> None:
        """Serve a file a test made (a bundle, an archive) under its name."""
        self.image(path.name, path.read_bytes())

    def update(self, uid: str, name: str, version: str = "2.0", *, sha256: str | None = None,
               signer: Signer | None = None, **fields: Any) -> dict[str, Any]:
        """The desired software_update of the served image `name`."""
        data = self.server.files[f"/{name}"]
        digest = sha256 or hashlib.sha256(data).hexdigest()
        signature = (signer or self.signer).sign(version, digest, len(data))
        return {"id": uid, "version": version, "url": self.server.url(f"/{name}?sv=2026&sig=secret"),
                "sha256": digest, "size": len(data), "signature": signature, "backend": self.backend, **fields}

    def close(self) -> None:
        self.server.__exit__()


def kill(proc: subprocess.Popen) -> None:
    """A power loss as the agent sees it: SIGKILL, no shutdown."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            kill(proc)


# ------------------------------------------------------------------------------------------------ RAUC
CUSTOM_BOOTLOADER = """#!/bin/sh
# a custom RAUC bootloader backend keeping A/B state in files beside it
dir=$(dirname "$0")
case "$1" in
  get-primary) cat "$dir/primary" ;;
  set-primary) echo "$2" > "$dir/primary" ;;
  get-state) cat "$dir/state.$2" 2>/dev/null || echo good ;;
  set-state) echo "$3" > "$dir/state.$2" ;;
  get-current) cat "$dir/current" ;;
  *) exit 1 ;;
esac
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def signing_cert(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate usable as RAUC keyring and bundle signer (and SWUpdate's CMS signer)."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
             "-addext", "extendedKeyUsage=emailProtection", cwd=folder)
    return folder / f"{name}.pem", folder / f"{name}.key"


class Rauc:
    """RAUC's service on a private D-Bus bus: two 4 MiB file slots, a keyring, a custom bootloader."""

    COMPATIBLE = "vehicle-agent-test"

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = signing_cert(folder, "rauc")
        self.evil_cert, self.evil_key = signing_cert(folder, "evil")
        for slot in ("A", "B"):
            (folder / f"slot{slot}.img").write_bytes(b"\0" * 4 * 2**20)
        boot = folder / "boot"
        boot.mkdir()
        (boot / "primary").write_text("A\n")
        (boot / "current").write_text("A\n")
        script = boot / "backend.sh"
        script.write_text(CUSTOM_BOOTLOADER)
        script.chmod(0o755)
        self.slow = folder / "slow"   # while it exists, each install takes 6 s more (a pre-install handler)
        pre = folder / "pre-install.sh"
        pre.write_text(f"#!/bin/sh\n[ -f {self.slow} ] && sleep 6\nexit 0\n")
        pre.chmod(0o755)
        (folder / "system.conf").write_text(f"""[system]
compatible={self.COMPATIBLE}
bootloader=custom
data-directory={folder / 'data'}
mountprefix={folder / 'mnt'}
bundle-formats=plain verity

[handlers]
bootloader-custom-backend={script}
pre-install={pre}

[keyring]
path={self.cert}

[slot.rootfs.0]
device={folder / 'slotA.img'}
type=raw
bootname=A

[slot.rootfs.1]
device={folder / 'slotB.img'}
type=raw
bootname=B
""")
        self.socket = folder / "bus.sock"
        self.address = f"unix:path={self.socket}"
        self.bus = subprocess.Popen(["dbus-daemon", "--session", f"--address={self.address}", "--nofork",
                                     "--nopidfile"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            assert time.monotonic() < deadline, "dbus-daemon did not start"
            time.sleep(0.02)
        self.service: subprocess.Popen | None = None
        self.log = folder / "rauc.log"

    def start(self, boot_slot: str = "A") -> None:
        """`rauc service` as booted from `boot_slot` (a reboot: stop, then start with the other slot)."""
        (self.dir / "boot" / "current").write_text(f"{boot_slot}\n")
        with self.log.open("a") as out:
            self.service = subprocess.Popen(
                ["rauc", f"--conf={self.dir / 'system.conf'}", "service", f"--override-boot-slot={boot_slot}"],
                env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address, "G_MESSAGES_DEBUG": "all"},
                stdout=out, stderr=out)  # debug messages: it logs when its name is acquired
        deadline = time.monotonic() + 20
        while "acquired" not in self.log.read_text():
            assert self.service.poll() is None, f"rauc service ended: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "rauc service did not acquire its name"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.service is not None:
            self.service.terminate()
            self.service.wait(10)
            self.service = None
        with self.log.open("a") as out:
            out.write("--- stopped ---\n")
        self.log.write_text("")  # the next start waits for its own "acquired"

    def close(self) -> None:
        if self.service is not None:
            self.stop()
        self.bus.terminate()
        self.bus.wait(10)

    def bundle(self, out: Path, payload: bytes, version: str, *, evil: bool = False) -> Path:
        src = self.dir / f"bundle-{out.stem}"
        src.mkdir()
        (src / "rootfs.img").write_bytes(payload)
        (src / "manifest.raucm").write_text(f"[update]\ncompatible={self.COMPATIBLE}\nversion={version}\n\n"
                                            "[bundle]\nformat=plain\n\n[image.rootfs]\nfilename=rootfs.img\n")
        cert, key = (self.evil_cert, self.evil_key) if evil else (self.cert, self.key)
        subprocess.run(["rauc", "bundle", f"--cert={cert}", f"--key={key}", str(src), str(out)], check=True,
                       capture_output=True)
        shutil.rmtree(src)
        return out

    def boot_state(self, slot: str) -> str:
        path = self.dir / "boot" / f"state.{slot}"
        return path.read_text().strip() if path.exists() else "good"

    def slot(self, slot: str) -> bytes:
        return (self.dir / f"slot{slot}.img").read_bytes()


# ------------------------------------------------------------------------------------------------ SWUpdate
class Swupdate:
    """swupdate with its sockets in a private folder, writing a `rawfile` target."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = signing_cert(folder, "swu")
        self.target = folder / "target.bin"
        self.conf = folder / "swupdate.cfg"
        self.conf.write_text(f'globals : {{ verbose = true; loglevel = 6; syslog = false; '
                             f'public-key-file = "{self.cert}"; }};\n')
        self.log = folder / "swupdate.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(["swupdate", "-f", str(self.conf), "-H", "board:1.0"],
                                         env={**os.environ, "TMPDIR": str(folder)}, stdout=out, stderr=out)
        deadline = time.monotonic() + 20
        while not (folder / "swupdateprog").exists() or not (folder / "sockinstctrl").exists():
            assert self.proc.poll() is None, f"swupdate ended: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "swupdate sockets did not appear"
            time.sleep(0.02)

    def swu(self, out: Path, payload: bytes, version: str, *, corrupt: bool = False) -> Path:
        work = self.dir / f"swu-{out.stem}"
        work.mkdir()
        (work / "payload.bin").write_bytes(payload)
        digest = hashlib.sha256(payload).hexdigest()
        (work / "sw-description").write_text(
            f'software = {{ version = "{version}"; hardware-compatibility: [ "1.0" ]; images: ( '
            f'{{ filename = "payload.bin"; path = "{self.target}"; type = "rawfile"; sha256 = "{digest}"; }} ); }}\n')
        _openssl("cms", "-sign", "-in", "sw-description", "-out", "sw-description.sig", "-signer", str(self.cert),
                 "-inkey", str(self.key), "-outform", "DER", "-nosmimecap", "-binary", cwd=work)
        if corrupt:
            (work / "payload.bin").write_bytes(bytes(b ^ 0xFF for b in payload))
        with out.open("wb") as f:
            subprocess.run(["cpio", "-o", "-H", "crc", "--quiet"], input=b"sw-description\nsw-description.sig\npayload.bin\n",
                           cwd=work, stdout=f, check=True)
        shutil.rmtree(work)
        return out

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
