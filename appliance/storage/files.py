"""Small files under the data directory — keys, certificates, the sync token's secret, the
parent's CA — replaced whole, atomically and durably. Blob files have their own path
(blobs.py); this is every other file the node writes."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_file(
    path: Path,
    data: bytes,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
    keep_existing: bool = False,
) -> bool:
    """Put `data` at `path`: a reader, or the disk after a power cut, sees the old file or the
    whole new one, never a part, and once this returns the new one survives a power cut.

    The bytes go to a temporary file in the same directory, created new (O_EXCL) with `mode`, so
    a key is never readable by others, not even for a moment, and a stale file with looser
    permissions is never reused; the file is fsynced, renamed over `path`, and the directory
    fsynced. `owner` (uid, gid) is given to the file before it is visible. With
    `keep_existing`, a file already at `path` (another process made it meanwhile) stays as it
    is and False is returned.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            # The umask may have taken bits a public certificate needs (0644 under umask 077).
            os.fchmod(f.fileno(), mode)
            if owner:
                os.fchown(f.fileno(), *owner)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if keep_existing:
            try:
                os.link(temporary, path)
                placed = True
            except FileExistsError:
                placed = False
            temporary.unlink()
        else:
            os.replace(temporary, path)
            placed = True
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return placed


def fsync_directory(path: Path) -> None:
    """Make the entries of `path` (a file created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
