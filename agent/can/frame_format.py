"""The kernel's `struct can_frame` / `struct canfd_frame`: id flags, masks, sizes, and packing.

Shared by the raw SocketCAN reader (which receives these structs), the candump log reader (whose
ids carry the same flags) and whatever writes frames to a socket (tests, the benchmark's sender).
"""

from __future__ import annotations

import struct

CAN_EFF_FLAG, CAN_RTR_FLAG, CAN_ERR_FLAG = 0x80000000, 0x40000000, 0x20000000
CAN_SFF_MASK, CAN_EFF_MASK = 0x7FF, 0x1FFFFFFF
CANFD_BRS = 0x01
CAN_MTU, CANFD_MTU = 16, 72
FRAME_HEADER = struct.Struct("=IB")  # can_id, len (then flags/pad, res0, res1/len8_dlc, data)


def pack_frame(frame_id: int, data: bytes, *, fd: bool = False, extended: bool | None = None, brs: bool = True) -> bytes:
    """The kernel's `struct can_frame` (or `canfd_frame`) for a frame: what a CAN socket sends and receives."""
    ext = frame_id > CAN_SFF_MASK if extended is None else extended
    can_id = frame_id | (CAN_EFF_FLAG if ext else 0)
    if fd:
        return struct.pack("=IBBBB64s", can_id, len(data), CANFD_BRS if brs else 0, 0, 0, data)
    return struct.pack("=IBBBB8s", can_id, len(data), 0, 0, 0, data)
