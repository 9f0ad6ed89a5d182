"""Resumable upload sessions.

A session is a row in `uploads` and a file `uploads/<id>` holding the bytes received so far; the
file's length is the truth about progress, so a session survives a restart and a client can ask
where to resume (GET → `Range`). Bytes are hashed as they arrive; hashlib's state cannot be saved,
so after a restart the first append re-reads the file once to rebuild it.

Writing and hashing run in a worker thread while the event loop reads the next piece of the
request body, so one upload keeps both cores busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from appliance.oci.errors import ErrorCode, OCIError
from appliance.storage.layout import Layout, is_session_id
from appliance.storage.schema import unsynced

# Bytes gathered before a write+hash is handed to the worker thread: big enough that thread
# hand-offs are rare, small enough that memory per upload stays a few MiB.
WRITE_BATCH = 4 * 1024 * 1024
ABANDONED_AFTER = 24 * 3600.0


@dataclass
class _HashState:
    hasher: Any
    offset: int


@dataclass(frozen=True)
class UploadStatus:
    session_id: str
    repository: str
    size: int


class Uploads:
    def __init__(self, layout: Layout, db: sqlite_utils.Database) -> None:
        self.layout = layout
        self.db = db
        self._hashes: dict[str, _HashState] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def create(self, repository: str) -> UploadStatus:
        # The session's file is made by its first write: an upload that is one PUT costs no
        # empty file.
        session_id = uuid.uuid4().hex
        now = time.time()
        with unsynced(self.db):
            self.db.execute(
                "INSERT INTO uploads (id, repository, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (session_id, repository, now, now),
            )
        self._hashes[session_id] = _HashState(hashlib.sha256(), 0)
        return UploadStatus(session_id, repository, 0)

    def status(self, repository: str, session_id: str) -> UploadStatus:
        """The session's progress; BLOB_UPLOAD_UNKNOWN if it does not exist in this repository."""
        if is_session_id(session_id):
            row = self.db.execute(
                "SELECT repository FROM uploads WHERE id = ?", (session_id,)
            ).fetchone()
            if row and row[0] == repository:
                try:
                    size = self.layout.upload(session_id).stat().st_size
                except FileNotFoundError:
                    size = 0  # nothing written yet
                return UploadStatus(session_id, repository, size)
        raise OCIError(ErrorCode.BLOB_UPLOAD_UNKNOWN, detail={"session": session_id[:100]})

    def lock(self, session_id: str) -> asyncio.Lock:
        """Held across an append or finish, so two requests never write one session at once."""
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def append(self, session: UploadStatus, body: AsyncIterator[bytes]) -> int:
        """Append a request body to the session; returns the new size.

        What arrived before a client hung up stays appended, as the spec's resumable uploads
        expect: the client asks for the size and continues from there.
        """
        path = self.layout.upload(session.session_id)
        state = await self._hash_state(session.session_id, session.size)
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None
        batch = bytearray()

        def write(f: Any, data: bytearray) -> None:
            f.write(data)
            state.hasher.update(data)
            state.offset += len(data)

        with open(path, "ab") as f:
            try:
                async for piece in body:
                    batch += piece
                    if len(batch) >= WRITE_BATCH:
                        if pending is not None:
                            await pending
                        pending = loop.run_in_executor(None, write, f, batch)
                        batch = bytearray()
            finally:
                if pending is not None:
                    await pending
                if batch:
                    await loop.run_in_executor(None, write, f, batch)
                with unsynced(self.db):
                    self.db.execute(
                        "UPDATE uploads SET updated_at = ? WHERE id = ?",
                        (time.time(), session.session_id),
                    )
        return state.offset

    async def digest(self, session: UploadStatus) -> str:
        state = await self._hash_state(session.session_id, session.size)
        return state.hasher.hexdigest()

    async def _hash_state(self, session_id: str, size: int) -> _HashState:
        state = self._hashes.get(session_id)
        if state is not None and state.offset == size:
            return state
        # After a restart (or a write that died half-way) rebuild the hash from the file itself.
        path = self.layout.upload(session_id)

        def rehash() -> _HashState:
            hasher = hashlib.sha256()
            offset = 0
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                while piece := f.read(WRITE_BATCH):
                    hasher.update(piece)
                    offset += len(piece)
            return _HashState(hasher, offset)

        state = await asyncio.get_running_loop().run_in_executor(None, rehash)
        self._hashes[session_id] = state
        return state

    def forget(self, session_id: str) -> None:
        """Drop a session's row and memory; its file is gone or moved by the caller."""
        with unsynced(self.db):
            self.db.execute("DELETE FROM uploads WHERE id = ?", (session_id,))
        self._hashes.pop(session_id, None)
        self._locks.pop(session_id, None)

    def cancel(self, session: UploadStatus) -> None:
        self.forget(session.session_id)
        self.layout.upload(session.session_id).unlink(missing_ok=True)

    def purge_abandoned(self, max_age: float = ABANDONED_AFTER) -> int:
        """Remove sessions idle for longer than `max_age` seconds, and files with no session."""
        cutoff = time.time() - max_age
        stale = [
            row[0]
            for row in self.db.execute("SELECT id FROM uploads WHERE updated_at < ?", (cutoff,))
        ]
        for session_id in stale:
            if session_id in self._locks and self._locks[session_id].locked():
                continue
            self.forget(session_id)
            self.layout.upload(session_id).unlink(missing_ok=True)
        # A file with no row is left by a crash between creating a session's file and its row.
        known = {row[0] for row in self.db.execute("SELECT id FROM uploads")}
        orphans = 0
        for entry in os.scandir(self.layout.uploads):
            if entry.name not in known and entry.stat().st_mtime < time.time() - 60:
                os.unlink(entry.path)
                orphans += 1
        return len(stale) + orphans
