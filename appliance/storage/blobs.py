"""Blob files: how their bytes reach the disk, and how a verified upload becomes a
content-addressed file, atomically."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

from appliance.oci.digests import Digest
from appliance.storage.files import fsync_directory
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


def place_blob_file(layout: Layout, source: Path, digest: Digest) -> int | None:
    """Move a verified, fsynced file into the blob store under its digest.

    Runs in a worker thread. rename() is atomic: a reader sees no file or the whole file. The
    database row that makes the blob visible is written only after this returns. Returns the
    moved file's inode if no file of that digest was there before (the caller may then
    `withdraw_blob_file` it), else None: the file there is another upload's or an earlier one's.
    """
    target = layout.blob(digest)
    folder = target.parent
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        fsync_directory(folder.parent)
    with open(source, "rb") as f:
        os.fsync(f.fileno())
        inode = os.fstat(f.fileno()).st_ino
    created = not target.exists()
    os.replace(source, target)
    # One journal commit carries both directory entries of a rename (ext4, xfs): syncing the
    # target's directory makes the move durable.
    fsync_directory(folder)
    return inode if created else None


def withdraw_blob_file(layout: Layout, digest: Digest, inode: int, source: Path) -> None:
    """Move the file `place_blob_file` placed (`inode`) back to `source`, when the row that was
    to make it visible could not be written. Another upload of the same digest may have
    replaced it meanwhile (from a worker thread, at any moment): the file is moved away first
    and looked at after, and one that is not ours goes straight back."""
    target = layout.blob(digest)
    try:
        os.rename(target, source)
    except FileNotFoundError:
        return
    if os.stat(source).st_ino != inode:
        os.replace(source, target)
