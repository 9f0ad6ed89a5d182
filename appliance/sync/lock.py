"""One sync at a time: the lock on `<data_dir>/sync.lock` every run holds for its whole length.

An flock, so the kernel releases it when the process dies: a crashed run never leaves a lock
behind. The service's runs (registry/control_socket.py) and `connected-registry sync`
in-process take the same one, so overlapping runs are impossible whichever process starts them.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class AlreadyRunning(Exception):
    """Another run holds the lock."""


@contextmanager
def sync_lock(lock_path: Path) -> Iterator[None]:
    """Held for the whole run; AlreadyRunning if another process holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning() from None
        yield
    finally:
        os.close(fd)  # closing releases the lock
