"""Blob files: how a verified upload becomes a content-addressed file, atomically."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.oci.digests import Digest
from appliance.storage.layout import Layout


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
