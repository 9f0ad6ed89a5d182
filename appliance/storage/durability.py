"""Group commit: one fsync of the write-ahead log makes every commit before it durable.

The server's connection commits with `synchronous=NORMAL`: a commit writes its WAL frames but
does not wait for the disk, so the event loop is never blocked on an fsync. Before a write is
acknowledged to a client, `WalSync.sync()` fsyncs the WAL file in a worker thread; requests that
commit while one fsync runs share the next one. The WAL's checksummed frames make a torn tail
harmless after a power cut (recovery stops at the last whole commit), so atomicity is SQLite's
and durability is this fsync's — the guarantee of `synchronous=FULL`, paid once per batch instead
of once per commit. A sync with no commit since the last finished fsync returns at once (a blob
PUT flushes in the store and again in the middleware; the second has nothing left to do).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path


class WalSync:
    def __init__(self, database: Path, changes: Callable[[], int]) -> None:
        """`changes` counts the rows our connection has changed (its `total_changes`)."""
        self.wal = database.with_name(database.name + "-wal")
        self._changes = changes
        self._durable_changes = changes()
        self._fd: int | None = None
        self._requested = 0
        self._completed = 0
        self._task: asyncio.Task[None] | None = None

    async def sync(self) -> None:
        """Return once every commit made before this call is on disk: at once when a finished
        fsync covered them all, else after an fsync that started after this call."""
        if self._changes() == self._durable_changes:
            return
        self._requested += 1
        target = self._requested
        while self._completed < target:
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._fsync(self._requested))
            await asyncio.shield(self._task)

    async def _fsync(self, covers: int) -> None:
        changes = self._changes()  # read before the fsync starts: what it is sure to cover
        await asyncio.get_running_loop().run_in_executor(None, self._fsync_now)
        self._completed = max(self._completed, covers)
        self._durable_changes = changes

    def _fsync_now(self) -> None:
        if self._fd is None:
            # The WAL exists once anything was written, and stays while our connection is open;
            # before that there is nothing to make durable.
            try:
                self._fd = os.open(self.wal, os.O_RDONLY)
            except FileNotFoundError:
                return
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
