"""kill -9 at awkward moments: what a power cut or an OOM kill does to the store (DESIGN §5).

Each test starts a private server, kills it with SIGKILL in the middle of a write, restarts it on
the same data directory and checks, over HTTP as a client would, that it holds either the old
state or the new one: no half blob is visible, no tag points at nothing, interrupted uploads can
be resumed, and every file in the blob store hashes to its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from support.crash import (
    assert_blob_store_sound,
    assert_manifest_sound,
    assert_repository_consistent,
    parse_range,
)
from support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    canonical,
    descriptor,
    digest_of,
    make_image,
    push_blob,
    push_image,
)
from support.registry import absolute, with_query

MiB = 1 << 20


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A session that never reuses a connection: the server it talked to may have been killed."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def start_upload(http: aiohttp.ClientSession, base: str, repo: str) -> str:
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        assert resp.status == 202, await resp.text()
        return absolute(base, resp.headers["Location"])


async def upload_status(http: aiohttp.ClientSession, location: str) -> aiohttp.ClientResponse:
    async with http.get(location) as resp:
        await resp.read()
        return resp


async def send(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: object
) -> int:
    """One request, its body read; returns the status. Wrapped in a task to be cut off."""
    async with http.request(method, url, **kwargs) as resp:
        await resp.read()
        return resp.status


async def kill_when(server, event: asyncio.Event, delay: float = 0.0) -> None:
    await event.wait()
    await asyncio.sleep(delay)
    await asyncio.to_thread(server.kill)


async def settle(task: asyncio.Task) -> BaseException | None:
    """Await a request the kill interrupted; its failure is expected."""
    try:
        await asyncio.wait_for(task, 30)
    except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError) as exc:
        return exc
    return None


# --- (a) a large streamed upload, killed mid-stream, resumed after restart -------------------


@pytest.mark.slow
async def test_upload_killed_mid_stream_resumes_after_restart(
    start_registry, repo: str, http: aiohttp.ClientSession
) -> None:
    server = start_registry()
    data = random.Random(1).randbytes(64 * MiB)
    digest = digest_of(data)
    location = await start_upload(http, server.url, repo)

    sent = 0
    halfway = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        nonlocal sent
        for offset in range(0, len(data), MiB):
            yield data[offset:offset + MiB]
            sent = offset + MiB
            if sent >= 24 * MiB:
                halfway.set()
            await asyncio.sleep(0.02)

    patch = asyncio.create_task(send(
        http, "PATCH", location, data=slow_body(),
        headers={"Content-Type": "application/octet-stream"},
    ))
    await kill_when(server, halfway, delay=0.3)
    error = await settle(patch)
    assert error is not None, "the PATCH finished although the server was killed mid-stream"
    assert sent < len(data)

    server.start()
    assert_blob_store_sound(server.data_dir)
    async with http.head(f"{server.url}/v2/{repo}/blobs/{digest}") as resp:
        assert resp.status == 404, "a half-uploaded blob is visible after the crash"

    status = await upload_status(http, location)
    assert status.status == 204, f"upload session lost in the crash: GET → {status.status}"
    held = parse_range(status.headers.get("Range"))
    print(f"killed with {sent} of {len(data)} bytes sent; after restart the server holds {held}")
    assert held <= sent, f"server claims {held} bytes of an upload that was sent {sent}"
    location = absolute(server.url, status.headers.get("Location", location))

    async with http.patch(location, data=data[held:], headers={
        "Content-Type": "application/octet-stream",
        "Content-Range": f"{held}-{len(data) - 1}",
    }) as resp:
        assert resp.status == 202, f"resume from {held}: {resp.status} {await resp.text()}"
        assert parse_range(resp.headers.get("Range")) == len(data)
        location = absolute(server.url, resp.headers["Location"])
    async with http.put(with_query(location, ("digest", digest))) as resp:
        assert resp.status == 201, f"closing the resumed upload: {resp.status} {await resp.text()}"
        assert resp.headers.get("Docker-Content-Digest", digest) == digest

    async with http.get(f"{server.url}/v2/{repo}/blobs/{digest}") as resp:
        assert resp.status == 200
        assert await resp.read() == data, "the resumed blob does not read back byte-exact"

    fresh = make_image("after-crash", layers=2)
    await push_image(http, server.url, repo, fresh, "fresh")
    assert (await assert_repository_consistent(http, server.url, repo))["fresh"] == fresh.digest
    assert_blob_store_sound(server.data_dir)


# --- (b) manifest PUTs cut off by the kill ---------------------------------------------------


async def send_partial_put(
    server, repo: str, reference: str, body: bytes, media_type: str
) -> asyncio.StreamWriter:
    """Headers and half the body of a manifest PUT, on a raw connection left open."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = (
        f"PUT /v2/{repo}/manifests/{reference} HTTP/1.1\r\n"
        f"Host: {server.host}\r\n"
        f"Content-Type: {media_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body[: len(body) // 2])
    await writer.drain()
    return writer


@pytest.mark.parametrize("target", ["existing tag", "new tag", "digest"])
async def test_manifest_put_killed_half_way(
    start_registry, repo: str, http: aiohttp.ClientSession, target: str
) -> None:
    server = start_registry()
    old = make_image("old", layers=2)
    await push_image(http, server.url, repo, old, "stable")
    new = make_image("new", layers=3)
    for blob in new.blobs:
        await push_blob(http, server.url, repo, blob)

    reference = {"existing tag": "stable", "new tag": "next", "digest": new.digest}[target]
    writer = await send_partial_put(server, repo, reference, new.manifest, new.media_type)
    await asyncio.sleep(0.3)
    server.kill()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()

    server.start()
    tags = await assert_repository_consistent(http, server.url, repo)
    assert tags == {"stable": old.digest}, "a manifest PUT that never completed changed the tags"
    async with http.get(f"{server.url}/v2/{repo}/manifests/{new.digest}") as resp:
        assert resp.status == 404, "half a manifest is readable by digest"
    assert_blob_store_sound(server.data_dir)

    await push_image(http, server.url, repo, new, reference)
    tags = await assert_repository_consistent(http, server.url, repo)
    assert tags == {"stable": new.digest if reference == "stable" else old.digest} | (
        {"next": new.digest} if reference == "next" else {}
    )
    await assert_manifest_sound(http, server.url, repo, new.digest, set())


async def push_forever(
    http: aiohttp.ClientSession, base: str, repo: str, worker: int, pushed: dict[str, str]
) -> None:
    """Push images, indexes and tag moves until the server goes away."""
    for round_no in range(10_000):
        image = make_image(f"w{worker}-r{round_no}-{os.urandom(4).hex()}", layers=2)
        await push_image(http, base, repo, image, f"w{worker}")
        pushed[f"w{worker}"] = image.digest
        if round_no % 3 == 0:
            index = canonical({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    descriptor(OCI_MANIFEST, image.manifest,
                               platform={"architecture": "amd64", "os": "linux"}),
                ],
            })
            async with http.put(f"{base}/v2/{repo}/manifests/index-{worker}", data=index,
                                headers={"Content-Type": OCI_INDEX}) as resp:
                assert resp.status == 201, await resp.text()
        async with http.put(f"{base}/v2/{repo}/manifests/shared", data=image.manifest,
                            headers={"Content-Type": image.media_type}) as resp:
            assert resp.status == 201, await resp.text()


@pytest.mark.slow
async def test_concurrent_manifest_puts_killed_at_random(
    start_registry, repo: str, http: aiohttp.ClientSession
) -> None:
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    server = start_registry()
    for crash in range(3):
        pushed: dict[str, str] = {}
        workers = [
            asyncio.create_task(push_forever(http, server.url, repo, worker, pushed))
            for worker in range(24)
        ]
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        await asyncio.to_thread(server.kill)
        results = await asyncio.gather(*workers, return_exceptions=True)
        unexpected = [
            r for r in results
            if isinstance(r, BaseException)
            and not isinstance(r, aiohttp.ClientError | ConnectionError | TimeoutError)
        ]
        assert not unexpected, f"seed {seed}, crash {crash}: {unexpected[:3]}"

        server.start()
        tags = await assert_repository_consistent(http, server.url, repo)
        print(f"seed {seed}, crash {crash}: {len(pushed)} acknowledged, {len(tags)} tags after")
        assert_blob_store_sound(server.data_dir)
        # What the server acknowledged (201) before the kill survived it.
        for tag, digest in pushed.items():
            assert tag in tags, f"seed {seed}: acknowledged tag {tag} lost in the crash"
            if tags[tag] != digest:
                # A later PUT of the same tag may have landed without its 201 reaching us.
                await assert_manifest_sound(http, server.url, repo, digest, set())

    again = make_image("after-crashes", layers=2)
    await push_image(http, server.url, repo, again, "shared")
    tags = await assert_repository_consistent(http, server.url, repo)
    assert tags["shared"] == again.digest


# --- (c) the blob store never holds a file whose content does not match its name -------------


@pytest.mark.slow
async def test_blob_store_sound_after_kill_during_monolithic_put(
    start_registry, repo: str, http: aiohttp.ClientSession
) -> None:
    """Killed while streaming a monolithic PUT body, and again while the server commits one."""
    server = start_registry()
    data = random.Random(2).randbytes(32 * MiB)
    digest = digest_of(data)

    # 1. Mid-body.
    location = await start_upload(http, server.url, repo)
    halfway = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        for offset in range(0, len(data), MiB):
            yield data[offset:offset + MiB]
            if offset >= 12 * MiB:
                halfway.set()
            await asyncio.sleep(0.01)

    put = asyncio.create_task(send(
        http, "PUT", with_query(location, ("digest", digest)), data=slow_body(),
        headers={"Content-Type": "application/octet-stream"},
    ))
    await kill_when(server, halfway, delay=0.2)
    await settle(put)
    server.start()
    assert_blob_store_sound(server.data_dir)
    async with http.head(f"{server.url}/v2/{repo}/blobs/{digest}") as resp:
        assert resp.status == 404, "a blob whose PUT was cut off half way is visible"

    # 2. The whole body sent, killed while the server verifies, syncs and renames it.
    for delay in (0.0, 0.01, 0.05, 0.1):
        location = await start_upload(http, server.url, repo)
        sent = asyncio.Event()

        async def whole_body(done: asyncio.Event) -> AsyncIterator[bytes]:
            for offset in range(0, len(data), 4 * MiB):
                yield data[offset:offset + 4 * MiB]
            done.set()

        put = asyncio.create_task(send(
            http, "PUT", with_query(location, ("digest", digest)), data=whole_body(sent),
            headers={"Content-Type": "application/octet-stream"},
        ))
        await kill_when(server, sent, delay=delay)
        await settle(put)
        server.start()
        assert_blob_store_sound(server.data_dir)
        async with http.get(f"{server.url}/v2/{repo}/blobs/{digest}") as resp:
            # Old state (absent) or new state (the whole blob), never anything between.
            assert resp.status in (200, 404), resp.status
            if resp.status == 200:
                assert await resp.read() == data

    await push_blob(http, server.url, repo, data)
    async with http.get(f"{server.url}/v2/{repo}/blobs/{digest}") as resp:
        assert resp.status == 200
        assert await resp.read() == data
    assert assert_blob_store_sound(server.data_dir) >= 1


# --- (d) uploads abandoned for more than 24 h are cleaned up ---------------------------------


def age_upload(db_path: Path, upload_id: str, age: timedelta) -> list[str]:
    """Move every timestamp of the upload row naming `upload_id` `age` into the past.

    Adapts to the schema: any column of `uploads` whose name looks like a time, stored as epoch
    seconds, epoch milliseconds or ISO 8601 text. Returns the columns it changed.
    """
    db = sqlite3.connect(db_path)
    try:
        columns = [row[1] for row in db.execute("PRAGMA table_info(uploads)")]
        assert columns, f"no table `uploads` in {db_path}"
        rows = db.execute("SELECT rowid, * FROM uploads").fetchall()
        mine = [r for r in rows if any(upload_id in str(v) for v in r[1:])]
        assert len(mine) == 1, f"upload {upload_id} in `uploads` ({columns}): {len(mine)} rows"
        rowid, *values = mine[0]
        changed: dict[str, object] = {}
        for name, value in zip(columns, values, strict=True):
            if not any(w in name.lower() for w in ("time", "_at", "date", "touched", "last")):
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                scale = 1000 if value > 1e11 else 1
                changed[name] = type(value)(value - age.total_seconds() * scale)
            elif isinstance(value, str) and value:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
                aged = (parsed - age).isoformat()
                if parsed.tzinfo is not None and value.endswith("Z"):
                    aged = aged.replace("+00:00", "Z")
                elif " " in value and "T" not in value:
                    aged = aged.replace("T", " ")
                changed[name] = aged
        assert changed, f"no timestamp column found in `uploads`: {columns}"
        sets = ", ".join(f'"{name}" = ?' for name in changed)
        db.execute(f"UPDATE uploads SET {sets} WHERE rowid = ?", [*changed.values(), rowid])
        db.commit()
        return list(changed)
    finally:
        db.close()


def status_of(data_dir: Path, *args: str) -> str:
    """`connected-registry status`, as an operator runs it beside the service."""
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "status", "--data-dir", str(data_dir), *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def status_json(data_dir: Path) -> dict:
    return json.loads(status_of(data_dir, "--output", "json"))


async def test_status_counts_upload_sessions_and_those_past_the_age(
    start_registry, repo: str, http: aiohttp.ClientSession
) -> None:
    server = start_registry()
    sessions = []
    for size in (1000, 3000):
        location = await start_upload(http, server.url, repo)
        async with http.patch(location, data=b"x" * size, headers={
            "Content-Type": "application/octet-stream", "Content-Range": f"0-{size - 1}",
        }) as resp:
            assert resp.status == 202, await resp.text()
        sessions.append(location.split("?")[0].rstrip("/").rsplit("/", 1)[-1])
    await start_upload(http, server.url, repo)  # begun, no byte yet

    uploads = (await asyncio.to_thread(status_json, server.data_dir))["storage"]["uploads"]
    assert uploads == {
        "sessions": 3, "bytes": 4000, "abandoned": 0, "abandonedBytes": 0,
        "abandonedAfterSeconds": 24 * 3600,
    }

    # The service is still running: its reaper looks again only within the hour.
    age_upload(server.data_dir / "registry.db", sessions[0], timedelta(hours=25))
    uploads = (await asyncio.to_thread(status_json, server.data_dir))["storage"]["uploads"]
    assert (uploads["sessions"], uploads["bytes"]) == (3, 4000)
    assert (uploads["abandoned"], uploads["abandonedBytes"]) == (1, 1000)
    table = await asyncio.to_thread(status_of, server.data_dir)
    assert "3 session(s) (3.9 KiB), 1 idle for over 24 h (1000 B)" in table


async def test_upload_abandoned_for_a_day_is_cleaned(
    start_registry, repo: str, http: aiohttp.ClientSession
) -> None:
    server = start_registry()
    abandoned = await start_upload(http, server.url, repo)
    async with http.patch(abandoned, data=b"x" * 1000, headers={
        "Content-Type": "application/octet-stream", "Content-Range": "0-999",
    }) as resp:
        assert resp.status == 202, await resp.text()
        abandoned = absolute(server.url, resp.headers["Location"])
    recent = await start_upload(http, server.url, repo)
    server.stop()

    upload_id = abandoned.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    changed = age_upload(server.data_dir / "registry.db", upload_id, timedelta(hours=25))
    print(f"aged columns of `uploads`: {changed}")

    server.start()
    deadline = time.monotonic() + 10
    while True:
        async with http.get(abandoned) as resp:
            body = await resp.json(content_type=None) if resp.status != 204 else None
            if resp.status == 404 or time.monotonic() > deadline:
                break
        await asyncio.sleep(0.2)
    assert resp.status == 404, f"upload abandoned for 25 h still there: GET → {resp.status}"
    assert body["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN", body
    leftovers = list(server.data_dir.rglob(f"*{upload_id}*"))
    assert not leftovers, f"files of the cleaned upload are left: {leftovers}"

    status = await upload_status(http, recent)
    assert status.status == 204, "an upload started moments ago was cleaned with the old one"
