"""What makes a rename survive a power loss: the folder's entry synced after the file's data."""

from __future__ import annotations

import os
from pathlib import Path


def sync_dir(path: Path) -> None:
    """fsync a folder, so the names created or replaced in it are on the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
