"""Partial blob downloads (`Uploads.download`): the session a sync downloads a blob into outlives
the download, is taken over by the next download of that digest for any repository, is held by
one process at a time (a file lock the kernel drops when the process dies), and is purged after
being idle like any upload session, never while a process holds it. `Store` in-process on real
SQLite and real files; the other process is a real child process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from appliance.oci.digests import Digest
from appliance.storage.store import Store

BLOB = bytes(range(256)) * 4096  # 1 MiB
DIGEST = Digest.of(BLOB)
HALF = len(BLOB) // 2


async def pieces(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_partial_is_resumed_by_the_next_download_of_its_digest_in_any_repository(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    try:
        with store.uploads.download("mirror/a", DIGEST) as first:
            assert first.size == 0
            await store.uploads.append(first, pieces(BLOB[:HALF]))
        # The download stopped (its block ended without finishing): its bytes stay.

        with store.uploads.download("mirror/b", DIGEST) as second:
            assert second.session_id == first.session_id
            assert second.size == HALF
            assert second.repository == "mirror/b"
            await store.finish_upload(second, DIGEST, pieces(BLOB[HALF:]))

        assert store.blob_size("mirror/b", DIGEST) == len(BLOB)
        assert store.blob_size("mirror/a", DIGEST) is None
        assert store.blob_path(DIGEST).read_bytes() == BLOB
        assert list(store.layout.uploads.iterdir()) == []
        assert store.uploads.partial_size(DIGEST) == 0
    finally:
        store.close()


HOLDER = """
import asyncio, sys
from pathlib import Path
from appliance.oci.digests import Digest
from appliance.storage.store import Store

async def pieces(data):
    yield data

store = Store(Path(sys.argv[1]))
with store.uploads.download("mirror/a", Digest.parse(sys.argv[2])) as session:
    asyncio.run(store.uploads.append(session, pieces(b"x" * int(sys.argv[3]))))
    print(session.session_id, flush=True)
    sys.stdin.read()  # held until the test kills us
"""


async def test_a_partial_held_by_another_process_is_neither_taken_over_nor_purged(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), str(DIGEST), str(HALF)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        held = holder.stdout.readline().strip()
        assert len(held) == 32, held

        with store.uploads.download("mirror/b", DIGEST) as mine:
            assert mine.session_id != held and mine.size == 0
        assert store.uploads.purge_abandoned(max_age=-1) == 1  # mine, idle and not held
        assert (store.layout.uploads / held).stat().st_size == HALF

        holder.kill()  # no cleanup: the kernel drops its lock
        holder.wait(10)
        with store.uploads.download("mirror/b", DIGEST) as taken:
            assert taken.session_id == held and taken.size == HALF
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        store.close()


async def test_an_abandoned_partial_is_purged_and_the_next_download_starts_from_zero(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    try:
        with store.uploads.download("mirror/a", DIGEST) as first:
            await store.uploads.append(first, pieces(BLOB[:HALF]))

        assert store.uploads.purge_abandoned(max_age=-1) == 1

        assert os.listdir(store.layout.uploads) == []
        assert store.uploads.partial_size(DIGEST) == 0
        with store.uploads.download("mirror/a", DIGEST) as second:
            assert second.session_id != first.session_id and second.size == 0
            await store.finish_upload(second, DIGEST, pieces(BLOB))
        assert store.blob_path(DIGEST).read_bytes() == BLOB
    finally:
        store.close()
