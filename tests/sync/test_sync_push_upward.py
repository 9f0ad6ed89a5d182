"""Push sync: a ReadWrite device's own pushes reach its root. Real processes on loopback: a root
served with auth, a ReadWrite device activated against it, the device's own server on its data
directory (clients push there with a token the root assigned to the device), `sync` on the
device in a child process, and the root's server checked for the bytes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import aiohttp
from support.cli import run
from support.hierarchy import Root, activate, read_write_device, writer
from support.oci import OCI_MANIFEST, digest_of, make_image, push_image
from support.sync import get, sync_json

from appliance.storage.layout import Layout
from appliance.storage.store import Store
from appliance.sync.push import parent_tag_key


def outbox(device: Path) -> list[tuple]:
    with sqlite3.connect(Layout(device).database) as db:
        return db.execute("SELECT repository, op, tag, digest FROM outbox ORDER BY seq").fetchall()


def device_tag(device: Path, repository: str, tag: str) -> tuple[str, str] | None:
    """(digest, origin) of a tag on the device."""
    store = Store(device)
    try:
        manifest = store.manifest(repository, tag)
        origin = store.tag_origin(repository, tag)
        return (manifest.digest, str(origin)) if manifest and origin else None
    finally:
        store.close()


async def head(http: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    async with http.head(url, headers={"Accept": OCI_MANIFEST}) as response:
        return response.status, response.headers.get("Docker-Content-Digest")


def push_of(report: dict) -> dict:
    return report["sources"][0]["push"]


async def test_an_image_pushed_to_the_device_reaches_the_root_and_a_tag_delete_follows(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    auth = writer(root)
    device = await read_write_device(root, tmp_path)
    served = start_registry(data_dir=device, args=["--auth", "--insecure-http"])
    image = make_image("made-on-the-device", layers=3)
    async with aiohttp.ClientSession(headers=auth) as http:
        await push_image(http, served.url, "demo/app", image, "v1")
    assert len(outbox(device)) == 2  # the manifest, then the tag

    report = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    assert report["sources"][0]["errors"] == []
    pushed = push_of(report)
    assert pushed["rows"] == 2
    assert pushed["manifests"] == 1 and pushed["tagsMoved"] == 1
    assert pushed["blobs"] + pushed["blobsMounted"] == len(image.blobs)
    assert pushed["bytes"] == sum(len(b) for b in image.blobs)
    assert pushed["conflicts"] == []
    assert outbox(device) == []
    async with aiohttp.ClientSession(headers=auth) as http:
        body, headers = await get(http, f"{root.server.url}/v2/demo/app/manifests/v1", OCI_MANIFEST)
        assert body == image.manifest
        assert headers["Docker-Content-Digest"] == image.digest
        assert headers["Content-Type"].startswith(OCI_MANIFEST)
        for blob in image.blobs:
            body, _ = await get(http, f"{root.server.url}/v2/demo/app/blobs/{digest_of(blob)}")
            assert body == blob
    # Once on the root, the tag is the root's to move: the pull may follow it from now on.
    assert device_tag(device, "demo/app", "v1") == (image.digest, "parent")

    again = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert push_of(again)["rows"] == 0
    assert push_of(again)["manifests"] == push_of(again)["blobs"] == 0
    assert push_of(again)["tagsMoved"] == 0
    assert again["total"]["manifests"] == again["total"]["tagsDeleted"] == 0

    # The same image in another repository: its blobs are mounted on the root, not re-sent.
    async with aiohttp.ClientSession(headers=auth) as http:
        await push_image(http, served.url, "demo/copy", image, "v1")
    mounted = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert push_of(mounted)["blobsMounted"] == len(image.blobs)
    assert push_of(mounted)["bytes"] == 0

    async with (
        aiohttp.ClientSession(headers=auth) as http,
        http.delete(f"{served.url}/v2/demo/app/manifests/v1") as response,
    ):
        assert response.status == 202, await response.text()
    deleted = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert push_of(deleted)["tagsDeleted"] == 1
    assert deleted["sources"][0]["errors"] == []
    async with aiohttp.ClientSession(headers=auth) as http:
        assert (await head(http, f"{root.server.url}/v2/demo/app/manifests/v1"))[0] == 404
        # Only the tag went: the manifest stays on the root by digest.
        url = f"{root.server.url}/v2/demo/app/manifests/{image.digest}"
        assert (await head(http, url))[0] == 200


async def test_a_tag_moved_on_both_sides_keeps_the_roots_and_is_reported(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    auth = writer(root)
    device = await read_write_device(root, tmp_path)
    first, theirs, ours = make_image("first"), make_image("root-moved"), make_image("device-moved")
    async with aiohttp.ClientSession(headers=auth) as http:
        await push_image(http, root.server.url, "demo/app", first, "v1")
    pulled = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert pulled["total"]["tagsMoved"] == 1
    # What came from the root is never echoed back up.
    assert outbox(device) == []
    assert push_of(pulled)["rows"] == 0
    assert device_tag(device, "demo/app", "v1") == (first.digest, "parent")
    store = Store(device)
    assert store.node.get(parent_tag_key("demo/app", "v1")) == first.digest
    store.close()

    served = start_registry(data_dir=device, args=["--auth", "--insecure-http"])
    async with aiohttp.ClientSession(headers=auth) as http:
        await push_image(http, root.server.url, "demo/app", theirs, "v1")
        await push_image(http, served.url, "demo/app", ours, "v1")

    report = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    pushed = push_of(report)
    assert len(pushed["conflicts"]) == 1
    assert pushed["conflicts"][0].startswith("TAG_CONFLICT: demo/app:v1")
    assert pushed["manifests"] == 1 and pushed["tagsMoved"] == 0
    async with aiohttp.ClientSession(headers=auth) as http:
        assert (await head(http, f"{root.server.url}/v2/demo/app/manifests/v1")) == (
            200,
            theirs.digest,
        )
        body, _ = await get(
            http, f"{root.server.url}/v2/demo/app/manifests/{ours.digest}", OCI_MANIFEST
        )
        assert body == ours.manifest
    shown = run("cloud", "show", "edge01", "--data-dir", str(tmp_path / "root"), "--output", "json")
    assert shown.returncode == 0, shown.stderr
    details = json.loads(shown.stdout)["statusDetails"]
    assert [d["code"] for d in details] == ["TAG_CONFLICT"]
    # Reported, but nothing failed: the parent won by rule, so the device is not Unhealthy.
    assert json.loads(shown.stdout)["connectionState"] == "Online"
    assert "demo/app:v1" in details[0]["description"]
    # The parent won: the pull (in this same run) moved the device's tag to the root's digest.
    assert device_tag(device, "demo/app", "v1") == (theirs.digest, "parent")
    assert outbox(device) == []


async def test_an_expired_row_is_dropped_and_the_image_still_reaches_the_root(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    auth = writer(root)
    device = await read_write_device(root, tmp_path, message_ttl="P1D")
    served = start_registry(data_dir=device, args=["--auth", "--insecure-http"])
    image = make_image("old-news", layers=2)
    async with aiohttp.ClientSession(headers=auth) as http:
        await push_image(http, served.url, "demo/old", image, "v1")
    with sqlite3.connect(Layout(device).database) as db:
        db.execute("UPDATE outbox SET time = '2000-01-01T00:00:00.000000Z'")

    report = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    pushed = push_of(report)
    assert pushed["expired"] == 2 and pushed["rows"] == 0
    assert pushed["reconciled"] == ["demo/old"]
    assert pushed["manifests"] == 1 and pushed["tagsMoved"] == 1
    assert report["sources"][0]["errors"] == []
    assert outbox(device) == []
    async with aiohttp.ClientSession(headers=auth) as http:
        body, _ = await get(http, f"{root.server.url}/v2/demo/old/manifests/v1", OCI_MANIFEST)
        assert body == image.manifest
        for blob in image.blobs:
            body, _ = await get(http, f"{root.server.url}/v2/demo/old/blobs/{digest_of(blob)}")
            assert body == blob
    # The mark is gone with the reconcile: the next run compares nothing more.
    again = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert push_of(again)["reconciled"] == []


async def test_a_read_only_device_has_no_push_work(root: Root, tmp_path: Path) -> None:
    auth = writer(root)
    password = root.create("edge02", ["demo/*"], mode="ReadOnly", client_tokens=["writer"])
    device = tmp_path / "device"
    activated = await asyncio.to_thread(activate, device, root.connection("edge02", password))
    assert activated.returncode == 0, activated.stderr
    async with aiohttp.ClientSession(headers=auth) as http:
        await push_image(http, root.server.url, "demo/app", make_image("down"), "v1")

    report = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    assert report["total"]["tagsMoved"] == 1
    assert report["sources"][0]["push"] is None
    assert outbox(device) == []
