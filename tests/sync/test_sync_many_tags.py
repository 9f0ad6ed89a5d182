"""A full reconcile of a repository with many tags over few images, from a plain upstream
(Debian's `docker-registry`): tags are checked several at a time and what they share is copied
once; a broken image fails its repository without holding back any tag whose content is
complete, and no tag ever points at content the node lacks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from support.oci import OCI_MANIFEST, Image, digest_of, make_image, push_image, push_manifest
from support.sync import DistributionRegistry, run_sync, sync_json

USER, PASSWORD = "mirror", "s3cret-pw"
AUTH = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}
TAGS = [f"t{i:02d}" for i in range(40)]


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[DistributionRegistry]:
    registry = DistributionRegistry(tmp_path / "distribution", USER, PASSWORD).start()
    yield registry
    registry.stop()


def node_config(tmp_path: Path, upstream_url: str, repositories: list[str]) -> Path:
    (tmp_path / "credentials").write_text(f"{USER}:{PASSWORD}\n")
    path = tmp_path / "node.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "node"}"\n'
        "[[upstream]]\n"
        f'url = "{upstream_url}"\n'
        f"repositories = {json.dumps(repositories)}\n"
        'credentials_file = "credentials"\n'
    )
    return path


async def push_tags(base: str, repository: str, images: dict[str, Image]) -> None:
    """Each image's blobs once, then its manifest under every tag given for it."""
    async with aiohttp.ClientSession(headers=AUTH) as http:
        pushed: set[str] = set()
        for tag, image in images.items():
            if image.digest not in pushed:
                await push_image(http, base, repository, image)
                pushed.add(image.digest)
            response = await push_manifest(
                http, base, repository, tag, image.manifest, OCI_MANIFEST
            )
            assert response.status == 201


async def served_tags(node_url: str, repository: str) -> dict[str, str]:
    """The node's tags of `repository`, each with the digest it serves, after checking that
    the manifest and every blob it references are served in full."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{node_url}/v2/{repository}/tags/list") as response:
            if response.status == 404:
                return {}
            tags = (await response.json())["tags"] or []
        served = {}
        for tag in tags:
            url = f"{node_url}/v2/{repository}/manifests/{tag}"
            async with http.get(url, headers={"Accept": OCI_MANIFEST}) as response:
                assert response.status == 200, (tag, response.status)
                body = await response.read()
            document = json.loads(body)
            for blob in [document["config"], *document["layers"]]:
                url = f"{node_url}/v2/{repository}/blobs/{blob['digest']}"
                async with http.get(url) as response:
                    assert response.status == 200, (tag, blob["digest"], response.status)
                    assert digest_of(await response.read()) == blob["digest"]
            served[tag] = digest_of(body)
        return served


async def test_tags_over_few_images_all_land_and_shared_content_is_asked_for_once(
    upstream: DistributionRegistry, tmp_path: Path, start_registry
) -> None:
    images = [make_image(f"many-{i}", layers=1) for i in range(4)]
    by_tag = {tag: images[i % len(images)] for i, tag in enumerate(TAGS)}
    await push_tags(upstream.url, "fleet/many", by_tag)
    config = node_config(tmp_path, upstream.url, ["fleet/many"])

    report = await asyncio.to_thread(sync_json, "--config", str(config))

    total = report["total"]
    assert (total["tagsMoved"], total["manifests"], total["blobs"]) == (40, 4, 8)
    # One tags list, a HEAD per tag, and per image: its manifest, its 2 blobs and its
    # referrers (the API, then the fallback tag: 2 requests), whatever the number of its tags;
    # plus the first request answered 401 (Basic auth).
    assert report["requests"] <= 1 + len(TAGS) + len(images) * (1 + 2 + 2) + 2
    node = start_registry(data_dir=tmp_path / "node")
    assert await served_tags(node.url, "fleet/many") == {
        tag: image.digest for tag, image in by_tag.items()
    }


async def test_a_broken_image_fails_its_repository_and_holds_back_no_complete_tag(
    upstream: DistributionRegistry, tmp_path: Path, start_registry
) -> None:
    images = [make_image(f"good-{i}", layers=1) for i in range(4)]
    broken = make_image("broken", layers=1)
    by_tag = {tag: images[i % len(images)] for i, tag in enumerate(TAGS)}
    by_tag["t05"] = by_tag["t30"] = broken
    await push_tags(upstream.url, "fleet/many", by_tag)
    await push_tags(upstream.url, "fleet/other", {"v1": make_image("other", layers=1)})
    lost_layer = broken.blobs[-1]
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.delete(f"{upstream.url}/v2/fleet/many/blobs/{digest_of(lost_layer)}") as response,
    ):
        assert response.status == 202
    config = node_config(tmp_path, upstream.url, ["fleet/many", "fleet/other"])

    result = await asyncio.to_thread(run_sync, "--config", str(config), "--output", "json")

    assert result.returncode == 1
    assert "fleet/many" in result.stderr.splitlines()[-1]
    errors = json.loads(result.stdout)["sources"][0]["errors"]
    assert len(errors) == 1 and "fleet/many" in errors[0]
    node = start_registry(data_dir=tmp_path / "node")
    served = await served_tags(node.url, "fleet/many")
    # Every tag that is there is whole and points where the upstream's does; the tags before
    # the broken one all moved (tags after it that were under way may have too); the broken
    # image's tags did not.
    assert all(by_tag[tag].digest == digest for tag, digest in served.items())
    assert {"t00", "t01", "t02", "t03", "t04"} <= served.keys()
    assert not {"t05", "t30"} & served.keys()
    # The error is the repository's: the next one was synced all the same.
    assert (await served_tags(node.url, "fleet/other")).keys() == {"v1"}

    async with aiohttp.ClientSession(headers=AUTH) as http:
        await push_image(http, upstream.url, "fleet/many", broken)
    repaired = await asyncio.to_thread(sync_json, "--config", str(config))

    assert repaired["sources"][0]["errors"] == []
    assert await served_tags(node.url, "fleet/many") == {
        tag: image.digest for tag, image in by_tag.items()
    }
