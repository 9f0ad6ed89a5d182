"""Resumable upload sessions.

A session is a row in `uploads` and a file `uploads/<id>` holding the bytes received so far; the
file's length is the truth about progress, so a session survives a restart and a client can ask
where to resume (GET → `Range`). Bytes are hashed as they arrive; hashlib's state cannot be saved,
so after a restart the first append re-reads the file once to rebuild it.

Writing and hashing run in a worker thread while the event loop reads the next piece of the
request body, so one upload keeps both cores busy.

A sync's blob download is a session too, one that records the blob's digest (`download`). It
is held by its process through an exclusive `flock` on its file, which the kernel releases when
the process dies however it dies, and it outlives a download that fails, is stopped or is
killed: the next download of that digest, for any repository, takes it over and resumes from
the file's length. Such a partial is purged like any idle session after 24 h, never while a
process holds it; since the digest lives in the session's own row, a purged partial leaves no
record behind, and the next download starts from zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from appliance.oci.digests import Digest
from appliance.oci.errors import ErrorCode, OCIError
from appliance.storage.blobs import start_writeback
from appliance.storage.layout import Layout, is_session_id
from appliance.storage.schema import unsynced
from appliance.storage.space import DiskFull, refused_when_full

# Bytes gathered before a write+hash is handed to the worker thread: big enough that thread
# hand-offs are rare, small enough that memory per upload stays a few MiB.
WRITE_BATCH = 4 * 1024 * 1024
# writev's limit on pieces per call (Linux's UIO_MAXIOV); it also bounds a batch of tiny pieces.
_IOV_MAX = 1024
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


@dataclass(frozen=True)
class SessionTally:
    """Upload sessions (pushes under way and download partials) and the bytes they hold on disk:
    all of them, and those idle for longer than the age after which they are purged."""

    sessions: int
    bytes: int
    abandoned: int
    abandoned_bytes: int


class Uploads:
    def __init__(self, layout: Layout, db: sqlite_utils.Database) -> None:
        self.layout = layout
        self.db = db
        self._hashes: dict[str, _HashState] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def create(self, repository: str, digest: Digest | None = None) -> UploadStatus:
        """A new session; `digest` marks a download of that blob (see `download`)."""
        # The session's file is made by its first write: an upload that is one PUT costs no
        # empty file.
        session_id = uuid.uuid4().hex
        now = time.time()
        with unsynced(self.db):
            self.db.execute(
                "INSERT INTO uploads (id, repository, created_at, updated_at, digest) "
                "VALUES (?, ?, ?, ?, ?)",
                (session_id, repository, now, now, str(digest) if digest is not None else None),
            )
        self._hashes[session_id] = _HashState(hashlib.sha256(), 0)
        return UploadStatus(session_id, repository, 0)

    @contextlib.contextmanager
    def download(self, repository: str, digest: Digest) -> Iterator[UploadStatus]:
        """A session to download the blob `digest` into for `repository`, held by this process
        until the block ends: the largest partial an earlier download left that no process
        holds (moved to `repository`; its `size` is where to resume), else a new one.

        The session outlives the block unless it is finished or cancelled: it is then the
        partial the next download of `digest` resumes."""
        held = self._take_over(repository, digest)
        if held is None:
            session = self.create(repository, digest)
            fd = _try_lock(self.layout.upload(session.session_id), create=True)
            assert fd is not None, "nobody else knows a session id made just now"
            held = fd, session
        fd, session = held
        try:
            yield session
        finally:
            os.close(fd)  # releases the lock; the file may already be the blob, moved

    def _take_over(self, repository: str, digest: Digest) -> tuple[int, UploadStatus] | None:
        """The largest unheld partial of `digest`, locked and moved to `repository`."""
        candidates = sorted(
            ((self._size(session_id), session_id) for session_id in self._partials(digest)),
            reverse=True,
        )
        for _, session_id in candidates:
            try:
                fd = _try_lock(self.layout.upload(session_id))
            except FileNotFoundError:
                continue  # never written, or finished by another process just now
            if fd is None:
                continue  # another process is downloading into it
            try:
                # Re-read under the lock: a session finished or purged meanwhile has no row.
                with unsynced(self.db):
                    moved = self.db.execute(
                        "UPDATE uploads SET repository = ?, updated_at = ? "
                        "WHERE id = ? AND digest = ?",
                        (repository, time.time(), session_id, str(digest)),
                    ).rowcount
                size = os.fstat(fd).st_size
            except BaseException:
                os.close(fd)
                raise
            if moved:
                return fd, UploadStatus(session_id, repository, size)
            os.close(fd)
        return None

    def partial_size(self, digest: Digest) -> int:
        """Bytes of `digest` already on disk from earlier downloads (the largest partial)."""
        return max((self._size(session_id) for session_id in self._partials(digest)), default=0)

    def _partials(self, digest: Digest) -> list[str]:
        rows = self.db.execute("SELECT id FROM uploads WHERE digest = ?", (str(digest),))
        return [row[0] for row in rows if is_session_id(row[0])]

    def _size(self, session_id: str) -> int:
        try:
            return self.layout.upload(session_id).stat().st_size
        except FileNotFoundError:
            return 0

    def restart(self, session: UploadStatus) -> UploadStatus:
        """Throw the session's bytes away: it continues from zero."""
        os.truncate(self.layout.upload(session.session_id), 0)
        self._hashes[session.session_id] = _HashState(hashlib.sha256(), 0)
        return UploadStatus(session.session_id, session.repository, 0)

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
        expect: the client asks for the size and continues from there. A full disk (`DiskFull`)
        is different: the session goes back to `session.size`, so a refused body does not keep
        the disk full.
        """
        try:
            with refused_when_full():
                return await self._append(session, body)
        except DiskFull:
            self.restore(session)
            raise

    async def _append(self, session: UploadStatus, body: AsyncIterator[bytes]) -> int:
        path = self.layout.upload(session.session_id)
        state = await self._hash_state(session.session_id, session.size)
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None
        # The pieces as the body gave them: gathering them into one buffer would copy every byte
        # once more, and writev takes them as they are.
        batch: list[bytes] = []
        batched = 0
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            try:
                async for piece in body:
                    batch.append(piece)
                    batched += len(piece)
                    if batched >= WRITE_BATCH or len(batch) >= _IOV_MAX:
                        if pending is not None:
                            await pending
                        pending = loop.run_in_executor(None, _write, fd, batch, state)
                        batch, batched = [], 0
            finally:
                if pending is not None:
                    await pending
                if batch:
                    await loop.run_in_executor(None, _write, fd, batch, state)
                with unsynced(self.db):
                    self.db.execute(
                        "UPDATE uploads SET updated_at = ? WHERE id = ?",
                        (time.time(), session.session_id),
                    )
        finally:
            os.close(fd)
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

    def restore(self, session: UploadStatus) -> None:
        """Cut the session's file back to `session.size`: what a refused request added goes."""
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.layout.upload(session.session_id), session.size)
        self._hashes.pop(session.session_id, None)  # rebuilt from the file by the next append

    def forget(self, session_id: str) -> None:
        """Drop a session's row and memory; its file is gone or moved by the caller."""
        with unsynced(self.db):
            self.db.execute("DELETE FROM uploads WHERE id = ?", (session_id,))
        self._hashes.pop(session_id, None)
        self._locks.pop(session_id, None)

    def cancel(self, session: UploadStatus) -> None:
        self.forget(session.session_id)
        self.layout.upload(session.session_id).unlink(missing_ok=True)

    def tally(self, max_age: float = ABANDONED_AFTER) -> SessionTally:
        """Count the sessions and their bytes; abandoned: no byte for longer than `max_age`
        seconds, which `purge_abandoned` removes unless a process holds one."""
        cutoff = time.time() - max_age
        sessions = abandoned = total = abandoned_bytes = 0
        for session_id, updated_at in self.db.execute("SELECT id, updated_at FROM uploads"):
            size = self._size(session_id) if is_session_id(session_id) else 0
            sessions += 1
            total += size
            if updated_at < cutoff:
                abandoned += 1
                abandoned_bytes += size
        return SessionTally(sessions, total, abandoned, abandoned_bytes)

    def purge_abandoned(self, max_age: float = ABANDONED_AFTER) -> int:
        """Remove sessions idle for longer than `max_age` seconds, and files with no session."""
        cutoff = time.time() - max_age
        stale = [
            row[0]
            for row in self.db.execute("SELECT id FROM uploads WHERE updated_at < ?", (cutoff,))
        ]
        removed = 0
        for session_id in stale:
            if session_id in self._locks and self._locks[session_id].locked():
                continue
            path = self.layout.upload(session_id)
            try:
                fd = _try_lock(path)
            except FileNotFoundError:
                self.forget(session_id)  # nothing was ever written: only the row
                removed += 1
                continue
            if fd is None:
                continue  # a download holds it (perhaps in the sync process): not abandoned
            try:
                self.forget(session_id)
                path.unlink(missing_ok=True)
                removed += 1
            finally:
                os.close(fd)
        # A file with no row is left by a crash between creating a session's file and its row.
        known = {row[0] for row in self.db.execute("SELECT id FROM uploads")}
        orphans = 0
        for entry in os.scandir(self.layout.uploads):
            if entry.name not in known and entry.stat().st_mtime < time.time() - 60:
                os.unlink(entry.path)
                orphans += 1
        return removed + orphans


def _write(fd: int, pieces: list[bytes], state: _HashState) -> None:
    """Append `pieces` to the file and to the hash. Runs in a worker thread: writev and sha256
    release the GIL, so the event loop meanwhile reads the next pieces."""
    total = sum(len(piece) for piece in pieces)
    written = os.writev(fd, pieces)
    if written < total:
        # A short write (a full disk, a signal): the rest one write at a time, until it fails.
        rest = memoryview(b"".join(pieces))[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]
    start_writeback(fd, state.offset, total)
    # Hashed only once in the file: a write that fails leaves `offset` behind the file's
    # length, and the next append rebuilds the hash from the file.
    for piece in pieces:
        state.hasher.update(piece)
    state.offset += total


def _try_lock(path: Path, create: bool = False) -> int | None:
    """A descriptor holding an exclusive flock on `path`, or None if another holder has it.
    FileNotFoundError when `path` does not exist (unless `create`)."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
