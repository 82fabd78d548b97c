"""What an installer backend does for the orchestrator (agent/ota/updater.py).

`install` hands a verified image to the installer and returns when it is installed (raises
InstallError with the installer's reason otherwise); `resume` is asked after a restart that
interrupted an install; `booted` and `mark_good` confirm the reboot (A/B installers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

Resumed = Literal["installed", "again"]   # finished meanwhile, or never started: install (again)


class InstallError(Exception):
    """The installer refused or failed; the text is what the cloud sees."""


class Backend(ABC):
    name = "backend"

    @abstractmethod
    async def install(self, image: Path, version: str, note: Callable[..., None],
                      progress: Callable[[int, int], None]) -> None:
        """Install `image`; `note(installer={...})` persists what `resume` needs; `progress(done, total)`."""

    @abstractmethod
    async def resume(self, installer: dict[str, Any], version: str) -> Resumed:
        """After a restart during `install`: wait for it to end and return, or raise InstallError."""

    async def target_slot(self) -> str | None:
        """The slot the image went to (A/B installers), asked right after the install."""
        return None

    async def booted(self) -> str | None:
        """The slot booted now (A/B installers), or None."""
        return None

    async def mark_good(self) -> None:
        """Tell the bootloader the booted slot is good (it stops falling back)."""

    async def close(self) -> None:
        """Release connections."""
