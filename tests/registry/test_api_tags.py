"""end-8a/8b (tags list with n and last) and the de-facto GET /v2/_catalog."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
import pytest
from support.oci import OCI_MANIFEST, make_image, push_blob, push_image, push_manifest
from support.registry import assert_oci_error, next_link

if TYPE_CHECKING:
    from support.server import RegistryProcess

TAGS = ["v2", "v10", "latest", "alpha", "1.0", "v1", "_private", "Zeta"]


async def tag_everything(http: aiohttp.ClientSession, base: str, repo: str) -> None:
    image = make_image(seed=repo)
    await push_image(http, base, repo, image, TAGS[0])
    for tag in TAGS[1:]:
        resp = await push_manifest(http, base, repo, tag, image.manifest, OCI_MANIFEST)
        assert resp.status == 201


async def get_page(
    http: aiohttp.ClientSession, url: str, base: str
) -> tuple[dict, str | None]:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json(content_type=None), next_link(resp, base)


async def walk_pages(
    http: aiohttp.ClientSession, url: str, base: str, key: str, n: int
) -> list[str]:
    """Follow `Link: rel="next"` to the end; a short page is allowed only with a next link."""
    seen: list[str] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        pages += 1
        assert pages < 100, "pagination does not end"
        doc, next_url = await get_page(http, next_url, base)
        items = doc[key] or []
        assert len(items) <= n
        seen.extend(items)
    return seen


async def test_tags_are_listed_in_lexical_order(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await tag_everything(http, registry.url, repo)
    doc, link = await get_page(http, f"{registry.url}/v2/{repo}/tags/list", registry.url)
    assert doc == {"name": repo, "tags": sorted(TAGS)}
    assert link is None


async def test_tags_are_paginated_with_link_until_the_end(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await tag_everything(http, registry.url, repo)
    url = f"{registry.url}/v2/{repo}/tags/list?n=3"
    doc, link = await get_page(http, url, registry.url)
    assert doc["tags"] == sorted(TAGS)[:3]
    assert link is not None
    assert await walk_pages(http, url, registry.url, "tags", 3) == sorted(TAGS)


async def test_last_is_exclusive(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await tag_everything(http, registry.url, repo)
    ordered = sorted(TAGS)
    doc, _ = await get_page(http, f"{registry.url}/v2/{repo}/tags/list?last={ordered[2]}",
                            registry.url)
    assert doc["tags"] == ordered[3:]
    doc, _ = await get_page(http, f"{registry.url}/v2/{repo}/tags/list?n=2&last={ordered[2]}",
                            registry.url)
    assert doc["tags"] == ordered[3:5]


async def test_last_need_not_be_an_existing_tag(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await tag_everything(http, registry.url, repo)
    doc, link = await get_page(http, f"{registry.url}/v2/{repo}/tags/list?last=m", registry.url)
    assert doc["tags"] == [t for t in sorted(TAGS) if t > "m"]
    assert link is None


async def test_n_zero_gives_an_empty_list_and_no_link(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await tag_everything(http, registry.url, repo)
    doc, link = await get_page(http, f"{registry.url}/v2/{repo}/tags/list?n=0", registry.url)
    assert doc["tags"] == []
    assert link is None


async def test_n_larger_than_the_list_gives_everything_and_no_link(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await tag_everything(http, registry.url, repo)
    doc, link = await get_page(http, f"{registry.url}/v2/{repo}/tags/list?n=100", registry.url)
    assert doc["tags"] == sorted(TAGS)
    assert link is None


async def test_tags_of_unknown_repository_is_404_name_unknown(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    async with http.get(f"{registry.url}/v2/{repo}/tags/list") as resp:
        await assert_oci_error(resp, 404, "NAME_UNKNOWN")


async def test_tags_of_repository_with_blobs_only_is_not_an_error_page(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    await push_blob(http, registry.url, repo, b"just a blob")
    async with http.get(f"{registry.url}/v2/{repo}/tags/list") as resp:
        if resp.status == 200:
            assert (await resp.json(content_type=None))["tags"] in ([], None)
        else:
            await assert_oci_error(resp, 404, "NAME_UNKNOWN")


CATALOG_REPOS = ["delta", "alpha/one", "gamma/x/y", "beta", "alpha/two", "alpha-three"]


async def catalog_server(
    start_registry: Callable[..., RegistryProcess], http: aiohttp.ClientSession
) -> RegistryProcess:
    server = start_registry()
    for name in CATALOG_REPOS:
        await push_image(http, server.url, name, make_image(seed=name), "v1")
    return server


async def test_catalog_lists_every_repository_in_order(
    start_registry: Callable[..., RegistryProcess], http: aiohttp.ClientSession
) -> None:
    server = await catalog_server(start_registry, http)
    doc, link = await get_page(http, f"{server.url}/v2/_catalog", server.url)
    assert doc == {"repositories": sorted(CATALOG_REPOS)}
    assert link is None


@pytest.mark.parametrize("n", [1, 2, 4])
async def test_catalog_is_paginated_with_link(
    start_registry: Callable[..., RegistryProcess], http: aiohttp.ClientSession, n: int
) -> None:
    server = await catalog_server(start_registry, http)
    url = f"{server.url}/v2/_catalog?n={n}"
    doc, link = await get_page(http, url, server.url)
    assert doc["repositories"] == sorted(CATALOG_REPOS)[:n]
    assert link is not None
    assert await walk_pages(http, url, server.url, "repositories", n) == sorted(CATALOG_REPOS)


async def test_catalog_last_and_n_zero(
    start_registry: Callable[..., RegistryProcess], http: aiohttp.ClientSession
) -> None:
    server = await catalog_server(start_registry, http)
    ordered = sorted(CATALOG_REPOS)
    doc, _ = await get_page(http, f"{server.url}/v2/_catalog?last={ordered[1]}", server.url)
    assert doc["repositories"] == ordered[2:]
    doc, link = await get_page(http, f"{server.url}/v2/_catalog?n=0", server.url)
    assert doc["repositories"] == []
    assert link is None


async def test_catalog_of_an_empty_registry_is_empty(
    start_registry: Callable[..., RegistryProcess], http: aiohttp.ClientSession
) -> None:
    server = start_registry()
    doc, link = await get_page(http, f"{server.url}/v2/_catalog", server.url)
    assert doc == {"repositories": []}
    assert link is None
