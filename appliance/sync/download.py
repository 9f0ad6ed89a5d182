"""A blob fetched from an upstream into an upload session: the one way a blob arrives, for a
sync's copy (copy.py) and an on-demand fetch (ondemand.py) alike.

The session is the blob's download session (`Uploads.download`): it resumes the partial an
interrupted download left, in any repository, from the file's length with `Range`. A partial
longer than the blob cannot be it, and an upstream that ignores `Range` cannot continue it:
either way what is on disk goes and the blob comes whole. The session is finished with the
expected digest through the store's one write path (Origin.PARENT): bytes that do not hash to
it are dropped, never stored; a full disk (`DiskFull`) keeps the session for a later try.
Bytes past the size a descriptor gave stop the download (they cannot be the blob, and they
must not fill the disk) and the session is dropped. The bandwidth limit and the bound on the
first byte are the client's (`RegistryClient`); the deadline (the end of a sync window) is
checked before each chunk, and a download it stops keeps its partial for the next window.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from appliance.oci.digests import Digest
from appliance.storage.store import Origin, Store
from appliance.storage.uploads import UploadStatus
from appliance.sync.client import RangeIgnored, RegistryClient, RegistryError
from appliance.sync.progress import current_progress
from appliance.sync.schedule import NO_DEADLINE, Deadline

SIZE_INVALID = "SIZE_INVALID"


class WindowClosed(Exception):
    """The sync window ended: the run stops where it is, keeping what was copied and the
    partial of a blob under way."""


class BlobDownload:
    """One blob from `client` into `repository` of `store`; `size`, when a descriptor gave it,
    bounds what the upstream may send."""

    def __init__(
        self,
        store: Store,
        client: RegistryClient,
        repository: str,
        digest: Digest,
        size: int | None,
        deadline: Deadline = NO_DEADLINE,
    ) -> None:
        self.store = store
        self.client = client
        self.repository = repository
        self.digest = digest
        self.size = size
        self.deadline = deadline
        # Received from the upstream by this download, stored or kept as a partial.
        self.received = 0
        # Of the stored blob, the bytes an earlier download had already fetched.
        self.resumed = 0

    async def run(self) -> int:
        """Download the rest of the blob and store it; its size. On failure the session stays
        as a partial, unless its bytes cannot be the blob."""
        with self.store.uploads.download(self.repository, self.digest) as session:
            if self.size is not None and session.size > self.size:
                session = self.store.uploads.restart(session)  # cannot be this blob
            resumed = session.size
            try:
                stored = await self._fetch_into(session)
            except RangeIgnored:
                # The upstream cannot continue: what is on disk goes, the blob comes whole.
                resumed, session = 0, self.store.uploads.restart(session)
                stored = await self._fetch_into(session)
        self.resumed = resumed
        return stored

    async def _fetch_into(self, session: UploadStatus) -> int:
        chunks = self.client.blob_chunks(self.repository, self.digest, session.size)
        limit = None if self.size is None else self.size - session.size
        received = _Counted(chunks, limit, self.deadline)
        current_progress().blob_started(str(self.digest), limit or 0)
        try:
            # A partial that holds every byte only needs its digest checked.
            body = None if limit == 0 else received
            return await self.store.finish_upload(session, self.digest, body, origin=Origin.PARENT)
        except RegistryError as err:
            if err.code == SIZE_INVALID:
                # More bytes than the blob has: none of them can be trusted.
                with contextlib.suppress(OSError):
                    self.store.uploads.cancel(session)
            raise
        finally:
            await chunks.aclose()
            self.received += received.size
            current_progress().blob_ended(str(self.digest))


class _Counted:
    """A blob stream that counts its bytes, stops an upstream that sends more than `limit`, and
    stops at the deadline (`WindowClosed`)."""

    def __init__(self, chunks: AsyncIterator[bytes], limit: int | None, deadline: Deadline) -> None:
        self._chunks = chunks
        self._limit = limit
        self._deadline = deadline
        self.size = 0

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        if self._deadline.passed():
            raise WindowClosed()
        chunk = await anext(self._chunks)
        self.size += len(chunk)
        current_progress().bytes_received(len(chunk))
        if self._limit is not None and self.size > self._limit:
            raise RegistryError(
                SIZE_INVALID, f"the upstream sent more than the {self._limit} bytes expected"
            )
        return chunk
