"""Group commit: a write is acknowledged only after an fsync of the WAL that began after it was
committed; writers that commit while one fsync runs share the next."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from appliance.config import Config
from appliance.registry.app import make_app
from appliance.registry.context import STORE
from appliance.storage.durability import WalSync
from appliance.storage.store import Store


class CountingWalSync(WalSync):
    """Counts fsyncs; `commit()` stands for a commit of the store's connection."""

    def __init__(self, database: Path) -> None:
        self.commits = 0
        super().__init__(database, lambda: self.commits)
        self.fsync_starts: list[float] = []

    def commit(self) -> None:
        self.commits += 1

    def _fsync_now(self) -> None:
        self.fsync_starts.append(time.monotonic())
        time.sleep(0.02)  # a slow disk


async def test_concurrent_writers_share_fsyncs_and_each_waits_for_one_that_began_after_it(
    tmp_path: Path,
) -> None:
    wal = CountingWalSync(tmp_path / "registry.db")
    called: list[float] = []

    async def writer(delay: float) -> float:
        await asyncio.sleep(delay)
        wal.commit()
        called.append(time.monotonic())
        start = called[-1]
        await wal.sync()
        return start

    starts = await asyncio.gather(*(writer(i * 0.005) for i in range(20)))
    assert 2 <= len(wal.fsync_starts) < 20
    for start in starts:
        assert any(begun >= start for begun in wal.fsync_starts)


async def test_syncing_before_anything_was_written_is_harmless(tmp_path: Path) -> None:
    wal = WalSync(tmp_path / "registry.db", lambda: 1)
    await wal.sync()
    wal.close()


async def test_a_sync_with_nothing_committed_since_the_last_fsync_waits_for_none(
    tmp_path: Path,
) -> None:
    wal = CountingWalSync(tmp_path / "registry.db")
    await wal.sync()
    assert wal.fsync_starts == []  # nothing committed yet
    wal.commit()
    await wal.sync()
    await wal.sync()  # as the middleware does after the store's own flush
    assert len(wal.fsync_starts) == 1
    wal.commit()
    await wal.sync()
    assert len(wal.fsync_starts) == 2


async def test_a_commit_made_while_an_fsync_runs_gets_an_fsync_of_its_own(tmp_path: Path) -> None:
    wal = CountingWalSync(tmp_path / "registry.db")
    wal.commit()
    first = asyncio.ensure_future(wal.sync())
    await asyncio.sleep(0.005)  # the first fsync has begun
    wal.commit()
    await asyncio.gather(first, wal.sync())
    assert len(wal.fsync_starts) == 2


def test_the_server_connection_commits_without_waiting_for_the_disk(tmp_path: Path) -> None:
    assert Store(tmp_path / "a", group_commit=True).conn.execute(
        "PRAGMA synchronous"
    ).fetchone()[0] == 1  # NORMAL
    assert Store(tmp_path / "b").conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


async def test_every_acknowledged_write_waits_for_an_fsync_but_an_upload_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real app on loopback: a chunk's PATCH does not wait for the WAL (its bytes are not
    fsynced either); any other PATCH that wrote (the management API's updates) does."""
    fsyncs: list[int] = []
    real_fsync = WalSync._fsync_now

    def counted(self: WalSync) -> None:
        fsyncs.append(1)
        real_fsync(self)

    monkeypatch.setattr(WalSync, "_fsync_now", counted)
    app = make_app(Config(data_dir=tmp_path / "data"))

    async def a_patch_that_writes(request: web.Request) -> web.Response:
        request.app[STORE].node.set("probe", request.match_info["value"])
        return web.Response(status=204)

    app.router.add_patch("/probe/{value}", a_patch_that_writes)
    async with TestServer(app, host="127.0.0.1") as served, aiohttp.ClientSession() as http:
        base = str(served.make_url("")).rstrip("/")
        async with http.post(f"{base}/v2/probe/app/blobs/uploads/") as resp:
            assert resp.status == 202
            location = base + resp.headers["Location"]
        before = len(fsyncs)
        async with http.patch(location, data=b"x" * 1000) as resp:
            assert resp.status == 202
        assert len(fsyncs) == before

        async with http.patch(f"{base}/probe/1") as resp:
            assert resp.status == 204
        assert len(fsyncs) == before + 1
