"""end-4a/4b (POST an upload), end-5 (PATCH chunks), end-6 (PUT to close), end-13 (status),
end-14 (cancel)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import aiohttp
import pytest
from support.oci import digest_of, push_blob
from support.registry import (
    absolute,
    assert_oci_error,
    get_blob,
    patch_chunk,
    start_upload,
    stream,
    with_query,
)
from yarl import URL

if TYPE_CHECKING:
    from support.server import RegistryProcess

DATA = os.urandom(3 * 65536 + 123)


async def close_upload(
    http: aiohttp.ClientSession, location: str, digest: str, final: bytes = b""
) -> aiohttp.ClientResponse:
    headers = {"Content-Type": "application/octet-stream"}
    async with http.put(with_query(location, ("digest", digest)), data=final, headers=headers) as r:
        await r.read()
        return r


async def assert_blob_created(
    http: aiohttp.ClientSession, base: str, resp: aiohttp.ClientResponse, data: bytes
) -> None:
    """201 with the digest, and a Location from which the very bytes can be pulled."""
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == digest_of(data)
    async with http.get(absolute(base, resp.headers["Location"])) as pulled:
        assert pulled.status == 200
        assert await pulled.read() == data


async def test_post_starts_an_upload_with_202_and_location(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    async with http.post(f"{registry.url}/v2/{repo}/blobs/uploads/") as resp:
        await resp.read()
        assert resp.status == 202
        assert resp.headers["Location"]


async def test_two_posts_get_two_different_sessions(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    first = await start_upload(http, registry.url, repo)
    second = await start_upload(http, registry.url, repo)
    assert first != second


async def test_post_then_put_creates_the_blob(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    resp = await close_upload(http, location, digest_of(DATA), DATA)
    await assert_blob_created(http, registry.url, resp, DATA)
    assert await get_blob(http, registry.url, repo, digest_of(DATA)) == DATA


async def test_empty_blob_can_be_pushed_and_pulled(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    resp = await close_upload(http, location, digest_of(b""))
    await assert_blob_created(http, registry.url, resp, b"")


async def test_single_post_with_digest_creates_the_blob(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    digest = digest_of(DATA)
    url = f"{registry.url}/v2/{repo}/blobs/uploads/?digest={digest}"
    headers = {"Content-Type": "application/octet-stream"}
    async with http.post(url, data=DATA, headers=headers) as resp:
        await resp.read()
        assert resp.status == 201
        await assert_blob_created(http, registry.url, resp, DATA)
    assert await get_blob(http, registry.url, repo, digest) == DATA


async def test_single_post_with_wrong_digest_is_refused_and_nothing_is_stored(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    claimed = digest_of(b"not the body")
    url = f"{registry.url}/v2/{repo}/blobs/uploads/?digest={claimed}"
    headers = {"Content-Type": "application/octet-stream"}
    async with http.post(url, data=DATA, headers=headers) as resp:
        if resp.status != 202:  # 202 = single-POST unsupported, the body was not taken
            await assert_oci_error(resp, 400, "DIGEST_INVALID")
    await push_blob(http, registry.url, repo, b"make the repository exist")
    assert await get_blob(http, registry.url, repo, claimed) is None
    assert await get_blob(http, registry.url, repo, digest_of(DATA)) is None


async def test_chunked_upload_reports_progress_and_creates_the_blob(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    offset = 0
    for size in (65536, 65536, len(DATA) - 131072):
        resp = await patch_chunk(http, location, DATA[offset : offset + size], offset)
        offset += size
        assert resp.status == 202
        assert resp.headers["Range"] == f"0-{offset - 1}"
        location = absolute(registry.url, resp.headers["Location"])
    resp = await close_upload(http, location, digest_of(DATA))
    await assert_blob_created(http, registry.url, resp, DATA)


async def test_put_with_final_chunk_completes_a_chunked_upload(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    resp = await patch_chunk(http, location, DATA[:1000], 0)
    assert resp.status == 202
    location = absolute(registry.url, resp.headers["Location"])
    resp = await close_upload(http, location, digest_of(DATA), DATA[1000:])
    await assert_blob_created(http, registry.url, resp, DATA)


async def test_out_of_order_chunk_is_refused_with_416(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    resp = await patch_chunk(http, location, DATA[:100], 0)
    location = absolute(registry.url, resp.headers["Location"])
    async with http.patch(
        location,
        data=DATA[200:300],
        headers={"Content-Type": "application/octet-stream", "Content-Range": "200-299"},
    ) as resp:
        await assert_oci_error(resp, 416)


async def test_first_chunk_not_starting_at_zero_is_refused_with_416(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    async with http.patch(
        location,
        data=DATA[5:10],
        headers={"Content-Type": "application/octet-stream", "Content-Range": "5-9"},
    ) as resp:
        await assert_oci_error(resp, 416)


async def test_upload_resumes_after_an_out_of_order_chunk(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """The spec's recovery: after 416, GET the status and continue from its Range."""
    location = await start_upload(http, registry.url, repo)
    resp = await patch_chunk(http, location, DATA[:100], 0)
    location = absolute(registry.url, resp.headers["Location"])
    refused = await patch_chunk(http, location, DATA[200:300], 200)
    assert refused.status == 416
    async with http.get(location) as status:
        assert status.status == 204
        assert status.headers["Range"] == "0-99"
        location = absolute(registry.url, status.headers["Location"])
    resp = await patch_chunk(http, location, DATA[100:], 100)
    assert resp.status == 202
    location = absolute(registry.url, resp.headers["Location"])
    await assert_blob_created(
        http, registry.url, await close_upload(http, location, digest_of(DATA)), DATA
    )


async def test_streamed_patch_without_content_range_is_accepted(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """skopeo and docker send one PATCH, chunked transfer-encoding, no Content-Range."""
    location = await start_upload(http, registry.url, repo)
    headers = {"Content-Type": "application/octet-stream"}
    async with http.patch(location, data=stream(DATA), headers=headers) as resp:
        await resp.read()
        assert resp.status == 202
        assert resp.headers["Range"] == f"0-{len(DATA) - 1}"
        location = absolute(registry.url, resp.headers["Location"])
    await assert_blob_created(
        http, registry.url, await close_upload(http, location, digest_of(DATA)), DATA
    )


async def test_two_streamed_patches_append(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    headers = {"Content-Type": "application/octet-stream"}
    for start, end in ((0, 70000), (70000, len(DATA))):
        async with http.patch(location, data=stream(DATA[start:end]), headers=headers) as resp:
            await resp.read()
            assert resp.status == 202
            assert resp.headers["Range"] == f"0-{end - 1}"
            location = absolute(registry.url, resp.headers["Location"])
    await assert_blob_created(
        http, registry.url, await close_upload(http, location, digest_of(DATA)), DATA
    )


async def test_streamed_put_closes_an_upload(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    url = with_query(location, ("digest", digest_of(DATA)))
    headers = {"Content-Type": "application/octet-stream"}
    async with http.put(url, data=stream(DATA), headers=headers) as resp:
        await resp.read()
        await assert_blob_created(http, registry.url, resp, DATA)


async def test_upload_status_reports_range_and_location(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    resp = await patch_chunk(http, location, DATA[:4096], 0)
    location = absolute(registry.url, resp.headers["Location"])
    async with http.get(location) as status:
        assert status.status == 204
        assert status.headers["Range"] == "0-4095"
        assert status.headers["Location"]
        assert await status.read() == b""


async def test_status_of_a_fresh_upload_is_204(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    async with http.get(location) as status:
        assert status.status == 204
        assert status.headers["Location"]
        assert "Range" in status.headers


async def test_cancelled_upload_is_gone(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    resp = await patch_chunk(http, location, DATA[:100], 0)
    location = absolute(registry.url, resp.headers["Location"])
    async with http.delete(location) as resp:
        await resp.read()
        assert resp.status == 204
    async with http.get(location) as resp:
        await assert_oci_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")
    resp = await patch_chunk(http, location, DATA[100:200], 100)
    await assert_oci_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")
    async with http.put(with_query(location, ("digest", digest_of(DATA[:100])))) as resp:
        await assert_oci_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_completed_upload_session_cannot_be_reused(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    resp = await close_upload(http, location, digest_of(DATA), DATA)
    assert resp.status == 201
    async with http.get(location) as resp:
        await assert_oci_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
async def test_unknown_upload_id_is_404_blob_upload_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, method: str
) -> None:
    await push_blob(http, registry.url, repo, b"make the repository exist")
    url = f"{registry.url}/v2/{repo}/blobs/uploads/{uuid.uuid4()}"
    if method == "PUT":
        url += f"?digest={digest_of(b'abc')}"
    headers = {"Content-Type": "application/octet-stream"}
    if method == "PATCH":
        headers["Content-Range"] = "0-2"
    body = b"abc" if method in ("PATCH", "PUT") else None
    async with http.request(method, url, data=body, headers=headers) as resp:
        await assert_oci_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_upload_session_of_one_repository_is_unknown_in_another(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    prefix = f"/v2/{repo}/blobs/uploads/"
    path = URL(location).path
    assert path.startswith(prefix), f"Location {location} is not under {prefix}"
    other = f"{repo}-other"
    await push_blob(http, registry.url, other, b"make the repository exist")
    stolen = str(URL(location).with_path(f"/v2/{other}/blobs/uploads/{path[len(prefix):]}"))
    resp = await close_upload(http, stolen, digest_of(DATA), DATA)
    await assert_oci_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")
    assert await get_blob(http, registry.url, other, digest_of(DATA)) is None


async def test_put_without_digest_is_400_digest_invalid(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    headers = {"Content-Type": "application/octet-stream"}
    async with http.put(location, data=DATA, headers=headers) as resp:
        await assert_oci_error(resp, 400, "DIGEST_INVALID")


async def test_put_with_mismatched_digest_is_refused_and_nothing_is_stored(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    claimed = digest_of(b"something else")
    location = await start_upload(http, registry.url, repo)
    resp = await close_upload(http, location, claimed, DATA)
    await assert_oci_error(resp, 400, "DIGEST_INVALID")
    await push_blob(http, registry.url, repo, b"make the repository exist")
    assert await get_blob(http, registry.url, repo, claimed) is None
    assert await get_blob(http, registry.url, repo, digest_of(DATA)) is None


async def test_put_with_malformed_digest_is_400_digest_invalid(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    resp = await close_upload(http, location, "sha256:zz", DATA)
    await assert_oci_error(resp, 400, "DIGEST_INVALID")


async def test_parallel_uploads_of_the_same_blob_both_succeed(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    async def upload() -> aiohttp.ClientResponse:
        location = await start_upload(http, registry.url, repo)
        return await close_upload(http, location, digest_of(DATA), DATA)

    results = await asyncio.gather(upload(), upload(), upload())
    assert [r.status for r in results] == [201, 201, 201]
    assert await get_blob(http, registry.url, repo, digest_of(DATA)) == DATA


async def test_blob_is_invisible_until_the_upload_is_closed(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    resp = await patch_chunk(http, location, DATA, 0)
    assert resp.status == 202
    location = absolute(registry.url, resp.headers["Location"])
    await push_blob(http, registry.url, repo, b"make the repository exist")
    assert await get_blob(http, registry.url, repo, digest_of(DATA)) is None
    await assert_blob_created(
        http, registry.url, await close_upload(http, location, digest_of(DATA)), DATA
    )


async def test_put_with_sha512_digest_is_refused_with_a_message_naming_sha256(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    digest = "sha512:" + hashlib.sha512(DATA).hexdigest()
    resp = await close_upload(http, location, digest, DATA)
    error = await assert_oci_error(resp, 400, "DIGEST_INVALID")
    assert "sha256" in error["message"].lower(), error


async def test_upload_in_progress_survives_a_restart(
    start_registry: Callable[..., RegistryProcess], http: aiohttp.ClientSession, repo: str
) -> None:
    """Resumable sessions: a device that reboots mid-push continues where it stopped."""
    server = start_registry()
    location = await start_upload(http, server.url, repo)
    resp = await patch_chunk(http, location, DATA[:65536], 0)
    location = absolute(server.url, resp.headers["Location"])
    server.restart()
    async with http.get(location) as status:
        assert status.status == 204
        assert status.headers["Range"] == "0-65535"
        location = absolute(server.url, status.headers["Location"])
    resp = await close_upload(http, location, digest_of(DATA), DATA[65536:])
    await assert_blob_created(http, server.url, resp, DATA)


async def test_racing_patches_at_the_same_offset_cannot_interleave(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    one, two = os.urandom(200_000), os.urandom(200_000)
    results = await asyncio.gather(
        patch_chunk(http, location, one, 0), patch_chunk(http, location, two, 0)
    )
    statuses = sorted(r.status for r in results)
    assert statuses[0] == 202, statuses
    assert statuses[1] == 416, f"both PATCHes of bytes 0-199999 were taken: {statuses}"
    await assert_oci_error(next(r for r in results if r.status != 202), 416, "BLOB_UPLOAD_INVALID")
    winner = one if results[0].status == 202 else two
    resp = await close_upload(http, location, digest_of(winner))
    await assert_blob_created(http, registry.url, resp, winner)


async def test_aborted_patch_leaves_a_resumable_upload(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """A connection that drops mid-PATCH: the status tells how much is kept, the rest follows."""
    location = await start_upload(http, registry.url, repo)
    resp = await patch_chunk(http, location, DATA[:1000], 0)
    location = absolute(registry.url, resp.headers["Location"])

    async def dropped() -> AsyncIterator[bytes]:
        yield DATA[1000:60000]
        raise ConnectionResetError("cable pulled")

    headers = {"Content-Type": "application/octet-stream"}
    with pytest.raises((aiohttp.ClientError, ConnectionResetError)):
        async with http.patch(location, data=dropped(), headers=headers) as resp:
            await resp.read()
    await asyncio.sleep(0.2)
    async with http.get(location) as status:
        assert status.status == 204
        kept = int(status.headers["Range"].split("-")[1]) + 1
        location = absolute(registry.url, status.headers["Location"])
    assert 1000 <= kept <= 60000
    resp = await patch_chunk(http, location, DATA[kept:], kept)
    assert resp.status == 202
    location = absolute(registry.url, resp.headers["Location"])
    await assert_blob_created(
        http, registry.url, await close_upload(http, location, digest_of(DATA)), DATA
    )
