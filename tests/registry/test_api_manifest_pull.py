"""end-3: GET/HEAD a manifest by tag and by digest."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
import pytest
from support.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    digest_of,
    make_image,
    push_blob,
    push_image,
    push_manifest,
)
from support.registry import MISSING_DIGEST, assert_oci_error

if TYPE_CHECKING:
    from support.server import RegistryProcess

ACCEPT_ALL = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])


@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_manifest_get_returns_exact_bytes_type_and_digest(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, by: str
) -> None:
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, "v1")
    reference = "v1" if by == "tag" else image.digest
    async with http.get(f"{registry.url}/v2/{repo}/manifests/{reference}") as resp:
        body = await resp.read()
        assert resp.status == 200
        assert body == image.manifest
        assert resp.headers["Content-Type"] == OCI_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == digest_of(body) == image.digest


@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_manifest_head_returns_type_digest_and_length(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, by: str
) -> None:
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, "v1")
    reference = "v1" if by == "tag" else image.digest
    async with http.head(f"{registry.url}/v2/{repo}/manifests/{reference}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == OCI_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == image.digest
        assert int(resp.headers["Content-Length"]) == len(image.manifest)
        assert await resp.read() == b""


async def test_manifest_get_with_client_accept_header(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo, media_type=DOCKER_MANIFEST)
    await push_image(http, registry.url, repo, image, "v1")
    url = f"{registry.url}/v2/{repo}/manifests/v1"
    async with http.get(url, headers={"Accept": ACCEPT_ALL}) as resp:
        assert resp.status == 200
        assert await resp.read() == image.manifest
        assert resp.headers["Content-Type"] == DOCKER_MANIFEST


async def test_manifest_bytes_are_stored_exactly_not_re_serialised(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """Whitespace and key order are part of the digest: pull must return what was pushed."""
    base = make_image(seed=repo)
    for blob in base.blobs:
        await push_blob(http, registry.url, repo, blob)
    doc = json.loads(base.manifest)
    pretty = json.dumps(dict(reversed(doc.items())), indent=3).encode() + b"\n"
    image = Image(pretty, OCI_MANIFEST, base.blobs)
    resp = await push_manifest(http, registry.url, repo, "pretty", pretty, OCI_MANIFEST)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == image.digest
    for reference in ("pretty", image.digest):
        async with http.get(f"{registry.url}/v2/{repo}/manifests/{reference}") as got:
            assert await got.read() == pretty
            assert got.headers["Docker-Content-Digest"] == image.digest


async def test_unknown_tag_is_404_manifest_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await push_image(http, registry.url, repo, make_image(seed=repo), "v1")
    async with http.get(f"{registry.url}/v2/{repo}/manifests/v2") as resp:
        await assert_oci_error(resp, 404, "MANIFEST_UNKNOWN")
    async with http.head(f"{registry.url}/v2/{repo}/manifests/v2") as resp:
        await assert_oci_error(resp, 404)


async def test_unknown_digest_is_404_manifest_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await push_image(http, registry.url, repo, make_image(seed=repo), "v1")
    async with http.get(f"{registry.url}/v2/{repo}/manifests/{MISSING_DIGEST}") as resp:
        await assert_oci_error(resp, 404, "MANIFEST_UNKNOWN")
    async with http.head(f"{registry.url}/v2/{repo}/manifests/{MISSING_DIGEST}") as resp:
        await assert_oci_error(resp, 404)


async def test_manifest_of_unknown_repository_is_404(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    async with http.get(f"{registry.url}/v2/{repo}/manifests/latest") as resp:
        await assert_oci_error(resp, 404, "MANIFEST_UNKNOWN")


async def test_manifest_of_another_repository_is_not_readable_by_digest(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    other = f"{repo}-other"
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, "v1")
    await push_image(http, registry.url, other, make_image(seed=other), "v1")
    async with http.get(f"{registry.url}/v2/{other}/manifests/{image.digest}") as resp:
        await assert_oci_error(resp, 404, "MANIFEST_UNKNOWN")


# Neither a valid tag nor a digest: no manifest can have such a reference.
NOT_A_REFERENCE = ["-dash-first", "a" * 129, "sha256:zz", "md5:" + "0" * 32]


@pytest.mark.parametrize("reference", NOT_A_REFERENCE)
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
async def test_reading_or_deleting_a_reference_that_is_no_tag_or_digest_is_404_manifest_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, method: str,
    reference: str,
) -> None:
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, "v1")
    url = f"{registry.url}/v2/{repo}/manifests/{reference}"
    async with http.request(method, url) as resp:
        await assert_oci_error(resp, 404, "MANIFEST_UNKNOWN")
    async with http.get(f"{registry.url}/v2/{repo}/manifests/v1") as got:
        assert await got.read() == image.manifest


@pytest.mark.parametrize("reference", ["-dash-first", "a" * 129])
async def test_pushing_to_a_reference_that_is_no_tag_is_400_manifest_invalid(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, reference: str
) -> None:
    image = make_image(seed=repo)
    for blob in image.blobs:
        await push_blob(http, registry.url, repo, blob)
    resp = await push_manifest(http, registry.url, repo, reference, image.manifest, OCI_MANIFEST)
    await assert_oci_error(resp, 400, "MANIFEST_INVALID")


async def test_pushed_content_survives_a_restart(
    start_registry: Callable[..., RegistryProcess], http: aiohttp.ClientSession, repo: str
) -> None:
    server = start_registry()
    image = make_image(seed=repo)
    await push_image(http, server.url, repo, image, "v1")
    server.restart()
    async with http.get(f"{server.url}/v2/{repo}/manifests/v1") as resp:
        assert resp.status == 200
        assert await resp.read() == image.manifest
    for blob in image.blobs:
        async with http.get(f"{server.url}/v2/{repo}/blobs/{digest_of(blob)}") as resp:
            assert await resp.read() == blob


@pytest.mark.parametrize("name", ["a/b-c/d__e/f.g", "a--b", "0/1", "x" * 100, "a_b/c"])
async def test_unusual_but_valid_names_are_accepted(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, name: str
) -> None:
    full = f"{repo}/{name}"
    image = make_image(seed=full)
    await push_image(http, registry.url, full, image, "v1")
    async with http.get(f"{registry.url}/v2/{full}/manifests/v1") as resp:
        assert resp.status == 200
        assert await resp.read() == image.manifest
    async with http.get(f"{registry.url}/v2/{full}/tags/list") as resp:
        assert await resp.json() == {"name": full, "tags": ["v1"]}
