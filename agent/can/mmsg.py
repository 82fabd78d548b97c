"""recvmmsg(2) for CAN sockets: many frames per system call, through ctypes.

On a small VM a `recvmsg` system call costs 2-3 µs, more than decoding the frame it returns.
Python's socket module has no `recvmmsg`, so this calls libc's with buffers laid out once: up to
`count` datagrams (with their kernel timestamps and the socket's drop counter) per call. Where
libc lacks it, `MultiReceiver.create` returns None and the caller drains with `recvmsg`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from typing import Any

MSG_DONTWAIT = 0x40
CTRL_BYTES = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4)  # SO_TIMESTAMPNS timespec, then SO_RXQ_OVFL u32


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_SIZE_T = "Q" if ctypes.sizeof(ctypes.c_size_t) == 8 else "I"
_CMSG_HEADER = socket.CMSG_LEN(0)


class MultiReceiver:
    """Receives up to `count` datagrams of at most `mtu` bytes per call into preallocated buffers."""

    def __init__(self, recvmmsg: Any, count: int, mtu: int) -> None:
        self._recvmmsg = recvmmsg
        self.count, self.mtu = count, mtu
        self.data = ctypes.create_string_buffer(mtu * count)
        self.ctrl = ctypes.create_string_buffer(CTRL_BYTES * count)
        self._iovs = (_IoVec * count)()
        self.msgs = (_MMsgHdr * count)()
        base_data, base_ctrl = ctypes.addressof(self.data), ctypes.addressof(self.ctrl)
        for i in range(count):
            self._iovs[i].iov_base, self._iovs[i].iov_len = base_data + i * mtu, mtu
            hdr = self.msgs[i].msg_hdr
            hdr.msg_iov, hdr.msg_iovlen = ctypes.addressof(self._iovs[i]), 1
            hdr.msg_control, hdr.msg_controllen = base_ctrl + i * CTRL_BYTES, CTRL_BYTES
        self.stride = ctypes.sizeof(_MMsgHdr)
        self.len_at = _MMsgHdr.msg_len.offset
        self.ctrllen_at = _MMsgHdr.msg_hdr.offset + _MsgHdr.msg_controllen.offset
        self.msgs_view = memoryview(self.msgs).cast("B")
        self.data_view = memoryview(self.data).cast("B")
        self.ctrl_view = memoryview(self.ctrl).cast("B")
        self._used = 0
        self.size_t = self._reset = struct.Struct("=" + _SIZE_T)
        # Per message, for struct.iter_unpack: (msg_controllen, msg_len) from the headers; the control
        # data as (len, level, type, tv_sec, tv_nsec, len, level, type, drops): a 64-bit timestamp
        # then the drop counter; the frame as (can_id, len, payload): struct can[fd]_frame.
        sz, hdr = _SIZE_T, socket.CMSG_LEN(0)
        self.heads = struct.Struct(f"={self.ctrllen_at}x{sz}{self.len_at - self.ctrllen_at - self.size_t.size}xI"
                                   f"{self.stride - self.len_at - 4}x")
        ts_space = socket.CMSG_SPACE(16)
        self.cmsgs = struct.Struct(f"={sz}ii{hdr - self.size_t.size - 8}xqq{ts_space - hdr - 16}x"
                                   f"{sz}ii{hdr - self.size_t.size - 8}xI{CTRL_BYTES - ts_space - hdr - 4}x")
        self.frames = struct.Struct(f"=IB3x{mtu - 8}s")

    @classmethod
    def create(cls, count: int = 256, mtu: int = 72) -> MultiReceiver | None:
        """A receiver, or None where libc has no recvmmsg (then use recvmsg)."""
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fn = libc.recvmmsg
        except (OSError, AttributeError):
            return None
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        fn.restype = ctypes.c_int
        return cls(fn, count, mtu)

    def receive(self, fd: int) -> int:
        """How many datagrams arrived (0 when none was waiting); raises OSError on socket errors."""
        pack_into, view, at, stride = self._reset.pack_into, self.msgs_view, self.ctrllen_at, self.stride
        for i in range(self._used):  # the kernel shrank msg_controllen of the ones it filled
            pack_into(view, i * stride + at, CTRL_BYTES)
        n = self._recvmmsg(fd, ctypes.addressof(self.msgs), self.count, MSG_DONTWAIT, None)
        if n < 0:
            self._used = 0
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            raise OSError(err, os.strerror(err))
        self._used = n
        return n
