"""end-2 (GET/HEAD a blob, with Range) and end-10 (DELETE a blob)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import aiohttp
import pytest
from support.oci import digest_of, push_blob
from support.registry import MISSING_DIGEST, assert_oci_error, get_blob

if TYPE_CHECKING:
    from support.server import RegistryProcess

DATA = os.urandom(5000)


async def test_blob_get_returns_exact_bytes_with_digest_and_length(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    digest = await push_blob(http, registry.url, repo, DATA)
    async with http.get(f"{registry.url}/v2/{repo}/blobs/{digest}") as resp:
        body = await resp.read()
        assert resp.status == 200
        assert body == DATA
        assert digest_of(body) == digest
        assert resp.headers["Docker-Content-Digest"] == digest
        assert int(resp.headers["Content-Length"]) == len(DATA)


async def test_blob_head_returns_digest_and_length_without_body(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    digest = await push_blob(http, registry.url, repo, DATA)
    async with http.head(f"{registry.url}/v2/{repo}/blobs/{digest}") as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Content-Digest"] == digest
        assert int(resp.headers["Content-Length"]) == len(DATA)
        assert await resp.read() == b""


async def test_unknown_blob_is_404_blob_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await push_blob(http, registry.url, repo, DATA)
    async with http.get(f"{registry.url}/v2/{repo}/blobs/{MISSING_DIGEST}") as resp:
        await assert_oci_error(resp, 404, "BLOB_UNKNOWN")
    async with http.head(f"{registry.url}/v2/{repo}/blobs/{MISSING_DIGEST}") as resp:
        await assert_oci_error(resp, 404)


async def test_blob_in_unknown_repository_is_404(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    async with http.get(f"{registry.url}/v2/{repo}/blobs/{MISSING_DIGEST}") as resp:
        await assert_oci_error(resp, 404, "BLOB_UNKNOWN")


async def test_blob_pushed_to_another_repository_is_not_readable(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    other = f"{repo}-other"
    digest = await push_blob(http, registry.url, repo, DATA)
    await push_blob(http, registry.url, other, b"something else entirely")
    async with http.get(f"{registry.url}/v2/{other}/blobs/{digest}") as resp:
        await assert_oci_error(resp, 404, "BLOB_UNKNOWN")
    async with http.head(f"{registry.url}/v2/{other}/blobs/{digest}") as resp:
        await assert_oci_error(resp, 404)


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=10-99", 10, 99),
        ("bytes=0-0", 0, 0),
        ("bytes=4000-", 4000, 4999),
        ("bytes=-100", 4900, 4999),
        ("bytes=4990-999999", 4990, 4999),
    ],
)
async def test_range_request_returns_206_with_exact_bytes(
    registry: RegistryProcess,
    http: aiohttp.ClientSession,
    repo: str,
    header: str,
    start: int,
    end: int,
) -> None:
    digest = await push_blob(http, registry.url, repo, DATA)
    url = f"{registry.url}/v2/{repo}/blobs/{digest}"
    async with http.get(url, headers={"Range": header}) as resp:
        body = await resp.read()
        assert resp.status == 206, body[:200]
        assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
        assert body == DATA[start : end + 1]
        assert int(resp.headers["Content-Length"]) == end - start + 1


async def test_range_requests_reassemble_the_whole_blob(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """What a resumed pull does: fetch the rest from where it stopped."""
    digest = await push_blob(http, registry.url, repo, DATA)
    url = f"{registry.url}/v2/{repo}/blobs/{digest}"
    pieces = []
    for start in range(0, len(DATA), 1024):
        async with http.get(url, headers={"Range": f"bytes={start}-{start + 1023}"}) as resp:
            assert resp.status == 206
            pieces.append(await resp.read())
    assert digest_of(b"".join(pieces)) == digest


async def test_unsatisfiable_range_is_416(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    digest = await push_blob(http, registry.url, repo, DATA)
    url = f"{registry.url}/v2/{repo}/blobs/{digest}"
    async with http.get(url, headers={"Range": f"bytes={len(DATA)}-{len(DATA) + 10}"}) as resp:
        await resp.read()
        assert resp.status == 416
        if "Content-Range" in resp.headers:
            assert resp.headers["Content-Range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize(
    "bad_digest",
    [
        "sha256:abc",
        "sha256:" + "g" * 64,
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 65,
        "sha256:",
        "notadigest",
        ":" + "a" * 64,
    ],
)
async def test_malformed_digest_is_400_digest_invalid(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, bad_digest: str
) -> None:
    await push_blob(http, registry.url, repo, DATA)
    async with http.get(f"{registry.url}/v2/{repo}/blobs/{bad_digest}") as resp:
        await assert_oci_error(resp, 400, "DIGEST_INVALID")


async def test_sha512_digest_is_refused_with_a_message_naming_sha256(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await push_blob(http, registry.url, repo, DATA)
    async with http.get(f"{registry.url}/v2/{repo}/blobs/sha512:{'a' * 128}") as resp:
        error = await assert_oci_error(resp, 400, "DIGEST_INVALID")
    assert "sha256" in error["message"].lower(), error


async def test_deleted_blob_is_gone(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    digest = await push_blob(http, registry.url, repo, DATA)
    async with http.delete(f"{registry.url}/v2/{repo}/blobs/{digest}") as resp:
        await resp.read()
        assert resp.status == 202
    async with http.get(f"{registry.url}/v2/{repo}/blobs/{digest}") as resp:
        await assert_oci_error(resp, 404, "BLOB_UNKNOWN")
    async with http.head(f"{registry.url}/v2/{repo}/blobs/{digest}") as resp:
        await assert_oci_error(resp, 404)


async def test_deleting_a_blob_in_one_repository_leaves_it_in_another(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    other = f"{repo}-other"
    digest = await push_blob(http, registry.url, repo, DATA)
    await push_blob(http, registry.url, other, DATA)
    async with http.delete(f"{registry.url}/v2/{repo}/blobs/{digest}") as resp:
        await resp.read()
        assert resp.status == 202
    assert await get_blob(http, registry.url, repo, digest) is None
    assert await get_blob(http, registry.url, other, digest) == DATA


async def test_deleting_an_unknown_blob_is_404_blob_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await push_blob(http, registry.url, repo, DATA)
    async with http.delete(f"{registry.url}/v2/{repo}/blobs/{MISSING_DIGEST}") as resp:
        await assert_oci_error(resp, 404, "BLOB_UNKNOWN")


async def test_deleted_blob_can_be_pushed_again(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    digest = await push_blob(http, registry.url, repo, DATA)
    async with http.delete(f"{registry.url}/v2/{repo}/blobs/{digest}") as resp:
        assert resp.status == 202
    assert await push_blob(http, registry.url, repo, DATA) == digest
    assert await get_blob(http, registry.url, repo, digest) == DATA
