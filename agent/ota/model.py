"""What the cloud sends (`software_update`, desired) and what the device configures (`ota`, local).

The desired property names one update: what to fetch (url, sha256, size), the detached signature
that proves the device's trusted keys vouch for it, which installer takes it, when it may be
installed (a guard over live signals, an install window) and when to reboot. The keys that may
vouch, the installers' settings and the reboot command stay in the local config file: a
compromised cloud account can ask for an update, never make the device trust or run something else.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import time as dtime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.campaigns.expr import ExpressionError, parse
from agent.download import HttpsUrl, Sha256Hex

UPDATE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")   # \Z, not $: no trailing newline
WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)\Z")
MAX_SIGNATURE_BYTES = 1024      # Ed25519 is 64 bytes, ECDSA P-521 DER at most 139
MAX_IMAGE_BYTES = 2**40

Backend = Literal["rauc", "swupdate", "command"]
Reboot = Literal["now", "when_guard", "never"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def install_window(text: str) -> tuple[dtime, dtime]:
    """`"HH:MM-HH:MM"` (local time; the end may be before the start: across midnight) -> (start, end)."""
    m = WINDOW.match(text)
    if not m:
        raise ValueError("expected HH:MM-HH:MM in local time, e.g. 01:00-05:00")
    start, end = dtime(int(m[1]), int(m[2])), dtime(int(m[3]), int(m[4]))
    if start == end:
        raise ValueError("start and end are the same time (leave install_window out for any time)")
    return start, end


class SoftwareUpdate(_Model):
    """The desired `software_update` property: one update, verified, guarded, installed, confirmed."""

    id: str = Field(description="This deployment's id; an id is installed at most once on a device.")
    version: str = Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$",
                         description="The software version the image installs (signed with it).")
    url: HttpsUrl = Field(description="https:// URL of the image (bundle, .swu, file).")
    sha256: Sha256Hex = Field(description="SHA-256 of the image, 64 lowercase hex digits (signed).")
    size: int = Field(gt=0, le=MAX_IMAGE_BYTES, description="Size of the image in bytes (signed).")
    signature: str = Field(min_length=1, max_length=2 * MAX_SIGNATURE_BYTES, description=(
        "Base64 of a detached Ed25519 or ECDSA (SHA-256) signature over the update's statement "
        "(docs/ota.md), checked against the public keys in the local config's ota.public_keys."))
    backend: Backend = Field("rauc", description="The installer: rauc (D-Bus), swupdate (IPC socket), command.")
    guard: str | None = Field(None, max_length=4096, description=(
        "A campaign expression over live signals (`VehicleSpeed == 0 and ParkingBrake == 1`) that must hold "
        "for ota.guard_hold_s before installing and before a `when_guard` reboot."))
    install_window: str | None = Field(None, description="HH:MM-HH:MM in the device's local time; none: any time.")
    reboot: Reboot = Field("when_guard", description=(
        "After installing: now, when_guard (the guard holds again), never (the next reboot activates it)."))
    cancel: bool = Field(False, description="true: stop this update if it has not started installing.")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not UPDATE_ID.match(value):
            raise ValueError("1-128 characters: letters, digits, . _ : - (starting with a letter or digit)")
        return value

    @field_validator("signature")
    @classmethod
    def _signature(cls, value: str) -> str:
        signature_bytes(value)
        return value

    @field_validator("guard")
    @classmethod
    def _guard(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse(value)
            except ExpressionError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("install_window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None:
            install_window(value)
        return value


def signature_bytes(text: str) -> bytes:
    """The signature's bytes from its base64 (standard or URL-safe alphabet); ValueError if it is not."""
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if not 0 < len(raw) <= MAX_SIGNATURE_BYTES:
        raise ValueError(f"a signature has 1..{MAX_SIGNATURE_BYTES} bytes")
    return raw


class RaucConfig(_Model):
    bus_address: str | None = Field(None, description=(
        "D-Bus address of the bus RAUC's service is on; default: the system bus "
        "($DBUS_SYSTEM_BUS_ADDRESS or unix:path=/run/dbus/system_bus_socket)."))


class SwupdateConfig(_Model):
    socket_dir: str = Field("/tmp", description=(
        "Folder of SWUpdate's sockets sockinstctrl and swupdateprog ($TMPDIR of the swupdate process)."))


class CommandConfig(_Model):
    argv: list[str] = Field(default_factory=list, max_length=64, description=(
        "The installer and its arguments; `{file}` is replaced by the verified image's path, "
        "`{version}` by its version. Exit code 0: installed."))
    timeout_s: float = Field(3600.0, gt=0, le=86400)


class OtaConfig(_Model):
    """Local settings of software updates (never cloud-writable)."""

    enabled: bool = Field(True, description="false: a desired software_update is refused.")
    public_keys: list[str] = Field(default_factory=list, max_length=16, description=(
        "PEM files of the Ed25519 or ECDSA public keys that may sign updates. None: every update is refused."))
    download_dir: str = Field("ota", description="Folder (under state_dir when relative) for images and state.")
    ca_file: str | None = Field(None, description="CA bundle for the image URL's TLS; default: the system's.")
    max_bytes: int = Field(8 * 2**30, gt=0, le=MAX_IMAGE_BYTES, description="Largest image accepted.")
    guard_hold_s: float = Field(30.0, ge=0, le=86400, description="How long the guard must hold before acting.")
    confirm_after_s: float = Field(60.0, ge=0, le=86400, description=(
        "After the reboot into the new software, the agent must be healthy this long before it marks the "
        "slot good (RAUC) and reports succeeded."))
    reboot_command: list[str] = Field(default_factory=lambda: ["systemctl", "reboot"], max_length=64)
    boot_id_file: str = Field("/proc/sys/kernel/random/boot_id", description="Tells one boot from the next.")
    version_file: str | None = Field(None, description=(
        "A file holding the running software's version (first line), for swupdate and command updates: "
        "after the reboot it says whether the new version runs (succeeded) or the old one (rolled_back)."))
    report_interval_s: float = Field(2.0, ge=0.1, le=3600, description="Progress is persisted at most this often.")
    rauc: RaucConfig = Field(default_factory=RaucConfig)
    swupdate: SwupdateConfig = Field(default_factory=SwupdateConfig)
    command: CommandConfig = Field(default_factory=CommandConfig)
