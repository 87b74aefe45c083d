"""Proofs of a file's identity: its first line's fingerprint, the marker and CRC-32 of the
bytes read, its birth time.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import zlib
from collections.abc import Callable

FINGERPRINT_BYTES = 4096
MARKER_BYTES = 64
CRC_READ_BYTES = 8 << 20


def fingerprint_of(fd: int) -> str | None:
    """Hash of the first line (or first 4 KiB); None until the first line is complete."""
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    newline = head.find(b"\n")
    if newline >= 0:
        head = head[: newline + 1]
    elif len(head) < FINGERPRINT_BYTES:
        return None
    return hashlib.sha256(head).hexdigest()[:32]


def base_fingerprint(identity: str) -> str:
    """The first-line fingerprint an identity starts with."""
    return identity.partition("@")[0]


def derived_id_prefix(identity: str) -> str:
    """The start of the event_id given to a line without one: `<identity hash>-<offset>`."""
    if "@" in identity:  # a file sharing its first line with another: hash the whole identity
        identity = hashlib.sha256(identity.encode()).hexdigest()
    return identity[:16] + "-"


def marker_at(fd: int, offset: int) -> str:
    """Hash of the bytes just before `offset`: detects a file rewritten under the checkpoint."""
    start = max(0, offset - MARKER_BYTES)
    return hashlib.sha256(os.pread(fd, offset - start, start)).hexdigest()[:16]


def crc_of(fd: int, end: int, start: int = 0, crc: int = 0) -> int | None:
    """CRC-32 of the bytes [start, end) continuing `crc`; None if the file is shorter."""
    position = start
    while position < end:
        chunk = os.pread(fd, min(CRC_READ_BYTES, end - position), position)
        if not chunk:
            return None
        crc = zlib.crc32(chunk, crc)
        position += len(chunk)
    return crc


# ---------------------------------------------------------------- birth time (statx)

_AT_EMPTY_PATH = 0x1000
_STATX_BTIME = 0x800


class _Timestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32),
                ("reserved", ctypes.c_int32)]


class _Statx(ctypes.Structure):
    # struct statx of linux/stat.h, up to the birth time and the spare room after it.
    _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32),
                ("attributes", ctypes.c_uint64), ("nlink", ctypes.c_uint32),
                ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32), ("mode", ctypes.c_uint16),
                ("pad", ctypes.c_uint16), ("ino", ctypes.c_uint64), ("size", ctypes.c_uint64),
                ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
                ("atime", _Timestamp), ("btime", _Timestamp), ("ctime", _Timestamp),
                ("mtime", _Timestamp), ("spare", ctypes.c_uint64 * 32)]


def _load_statx() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):  # a libc without statx (glibc < 2.28, musl < 1.2.5)
        return None
    return function


_statx = _load_statx()


def birth_time(fd: int) -> int:
    """When the open file was created (ns since the epoch); 0 where the system cannot say.

    Python 3.11 has no os.statx, so statx(2) is called through ctypes.
    """
    if _statx is None:
        return 0
    found = _Statx()
    if _statx(fd, b"", _AT_EMPTY_PATH, _STATX_BTIME, ctypes.byref(found)) != 0:
        return 0
    if not found.mask & _STATX_BTIME:
        return 0
    return int(found.btime.tv_sec) * 1_000_000_000 + int(found.btime.tv_nsec)


def inode_at(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(device, inode) of what `path` names now, None if nothing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
