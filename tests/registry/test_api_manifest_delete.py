"""end-9: DELETE a manifest by digest or by tag."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from support.oci import OCI_MANIFEST, digest_of, make_image, push_image, push_manifest
from support.registry import MISSING_DIGEST, assert_oci_error, get_blob, get_manifest, list_tags

if TYPE_CHECKING:
    from support.server import RegistryProcess


async def delete_manifest(
    http: aiohttp.ClientSession, base: str, repo: str, reference: str
) -> aiohttp.ClientResponse:
    async with http.delete(f"{base}/v2/{repo}/manifests/{reference}") as resp:
        await resp.read()
        return resp


async def test_delete_by_digest_removes_the_manifest_and_its_tags(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    doomed, kept = make_image(seed=f"{repo}-doomed"), make_image(seed=f"{repo}-kept")
    await push_image(http, registry.url, repo, doomed, "old")
    await push_manifest(http, registry.url, repo, "older", doomed.manifest, OCI_MANIFEST)
    await push_image(http, registry.url, repo, kept, "keep")
    resp = await delete_manifest(http, registry.url, repo, doomed.digest)
    assert resp.status == 202
    async with http.get(f"{registry.url}/v2/{repo}/manifests/{doomed.digest}") as got:
        await assert_oci_error(got, 404, "MANIFEST_UNKNOWN")
    for tag in ("old", "older"):
        async with http.get(f"{registry.url}/v2/{repo}/manifests/{tag}") as got:
            await assert_oci_error(got, 404, "MANIFEST_UNKNOWN")
    assert await list_tags(http, registry.url, repo) == ["keep"]
    assert await get_manifest(http, registry.url, repo, "keep") == (200, kept.manifest)


async def test_delete_by_tag_removes_only_the_tag(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, "a")
    await push_manifest(http, registry.url, repo, "b", image.manifest, OCI_MANIFEST)
    resp = await delete_manifest(http, registry.url, repo, "a")
    assert resp.status == 202
    async with http.get(f"{registry.url}/v2/{repo}/manifests/a") as got:
        await assert_oci_error(got, 404, "MANIFEST_UNKNOWN")
    assert await get_manifest(http, registry.url, repo, "b") == (200, image.manifest)
    assert await get_manifest(http, registry.url, repo, image.digest) == (200, image.manifest)
    assert await list_tags(http, registry.url, repo) == ["b"]


async def test_deleting_a_manifest_keeps_its_blobs_readable_until_gc(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """Other manifests may share the layers; only garbage collection removes blobs."""
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, "v1")
    assert (await delete_manifest(http, registry.url, repo, image.digest)).status == 202
    for blob in image.blobs:
        assert await get_blob(http, registry.url, repo, digest_of(blob)) == blob


async def test_deleted_manifest_can_be_pushed_again(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, "v1")
    assert (await delete_manifest(http, registry.url, repo, image.digest)).status == 202
    resp = await push_manifest(http, registry.url, repo, "v1", image.manifest, OCI_MANIFEST)
    assert resp.status == 201
    assert await get_manifest(http, registry.url, repo, "v1") == (200, image.manifest)


async def test_deleting_an_unknown_digest_is_404_manifest_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await push_image(http, registry.url, repo, make_image(seed=repo), "v1")
    resp = await delete_manifest(http, registry.url, repo, MISSING_DIGEST)
    await assert_oci_error(resp, 404, "MANIFEST_UNKNOWN")


async def test_deleting_an_unknown_tag_is_404_manifest_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await push_image(http, registry.url, repo, make_image(seed=repo), "v1")
    resp = await delete_manifest(http, registry.url, repo, "nope")
    await assert_oci_error(resp, 404, "MANIFEST_UNKNOWN")


async def test_deleting_in_an_unknown_repository_is_404(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    resp = await delete_manifest(http, registry.url, repo, MISSING_DIGEST)
    await assert_oci_error(resp, 404, "MANIFEST_UNKNOWN")


async def test_deleting_a_manifest_in_one_repository_leaves_another(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    other = f"{repo}-other"
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, "v1")
    await push_image(http, registry.url, other, image, "v1")
    assert (await delete_manifest(http, registry.url, repo, image.digest)).status == 202
    assert await get_manifest(http, registry.url, other, "v1") == (200, image.manifest)
