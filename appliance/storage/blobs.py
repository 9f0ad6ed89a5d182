"""Blob files: how their bytes reach the disk, and how a verified upload becomes a
content-addressed file, atomically."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

from appliance.oci.digests import Digest
from appliance.storage.layout import Layout

# sync_file_range(2), which Python's os module lacks; None where libc has none (not Linux).
_sync_file_range: Any = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing `length` bytes at `offset` of the file to the disk, without waiting.

    An upload calls it as it writes: the disk then works while the rest of the blob arrives, and
    the fsync that makes the blob durable (`place_blob_file`) has little left to wait for.
    Advisory only: where the call is missing or fails, that fsync does all the work."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place_blob_file(layout: Layout, source: Path, digest: Digest) -> Path:
    """Move a verified, fsynced file into the blob store under its digest.

    Runs in a worker thread. rename() is atomic: a reader sees no file or the whole file. The
    database row that makes the blob visible is written only after this returns.
    """
    target = layout.blob(digest)
    folder = target.parent
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        fsync_directory(folder.parent)
    with open(source, "rb") as f:
        os.fsync(f.fileno())
    os.replace(source, target)
    # One journal commit carries both directory entries of a rename (ext4, xfs): syncing the
    # target's directory makes the move durable.
    fsync_directory(folder)
    return target
