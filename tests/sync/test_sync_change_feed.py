"""The parent's change feed (PROTOCOL.md §3): the root's `changes` endpoint, and a device's sync
driven by it: only repositories that changed are reconciled, an idle run costs three requests,
and a cursor older than what the root keeps resets to a full reconcile that is still right."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from support.hierarchy import Root, activate, node_state
from support.oci import OCI_MANIFEST, descriptor, make_image, push_image
from support.sync import sync_json

from appliance.auth.scopes import PUSH, Permission
from appliance.control.feed import prune_changes
from appliance.oci.digests import Digest
from appliance.storage.store import Store

PUSH_AND_LIST = PUSH | {"metadata/read", "content/delete"}


def pusher(root: Root) -> dict[str, str]:
    """Headers of a token that may push and delete anywhere on the root (made once per root)."""
    headers: dict[str, str] | None = getattr(root, "pusher_headers", None)
    if headers is None:
        root.credentials.create_scope_map("all-push", (Permission("**", PUSH_AND_LIST),))
        _, passwords = root.credentials.create_token("pusher", "all-push")
        headers = {"Authorization": aiohttp.encode_basic_auth("pusher", passwords["password1"])}
        root.pusher_headers = headers  # type: ignore[attr-defined]
    return headers


def feed_url(root: Root, query: str) -> str:
    return f"{root.server.url}/gateway/v1/registries/edge01/changes?{query}"


async def feed(http: aiohttp.ClientSession, root: Root, query: str) -> dict:
    async with http.get(feed_url(root, query)) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_the_feed_lists_changes_in_scope_oldest_first(root: Root) -> None:
    password = root.create("edge01", ["demo/*"], mode="ReadOnly")
    sync = {"Authorization": aiohttp.encode_basic_auth("edge01", password)}
    headers = pusher(root)
    async with aiohttp.ClientSession(headers=headers) as push:
        await push_image(push, root.server.url, "demo/seed", make_image("s"), "v1")
    async with aiohttp.ClientSession(headers=sync) as http:
        # A first call: reset, at the newest position.
        first = await feed(http, root, "cursor=0")
        assert first["reset"] is True and first["changes"] == []
        start = first["cursor"]
        assert start > 0
        assert (await feed(http, root, ""))["reset"] is True

        async with aiohttp.ClientSession(headers=headers) as push:
            await push_image(push, root.server.url, "demo/app", make_image("a"), "v1")
            await push_image(push, root.server.url, "elsewhere/x", make_image("x"), "v1")
            await push_image(push, root.server.url, "demo/app", make_image("b"), "v2")
            async with push.delete(f"{root.server.url}/v2/demo/app/manifests/v1") as response:
                assert response.status == 202, await response.text()

        answer = await feed(http, root, f"cursor={start}")
        assert answer["reset"] is False
        changes = answer["changes"]
        assert {c["repository"] for c in changes} == {"demo/app"}
        assert [c["seq"] for c in changes] == sorted(c["seq"] for c in changes)
        assert all(c["seq"] > start for c in changes)
        tagged = [(c["op"], c["tag"]) for c in changes if c["tag"]]
        assert tagged == [("put", "v1"), ("put", "v2"), ("delete", "v1")]
        assert answer["cursor"] >= changes[-1]["seq"]
        assert set(changes[0]) == {"seq", "repository", "op", "tag", "digest", "time"}

        # Nothing new: an empty page at the same cursor, at once.
        empty = await feed(http, root, f"cursor={answer['cursor']}")
        assert empty == {"cursor": answer["cursor"], "reset": False, "changes": [], "more": False}

        # A long poll returns when a change arrives, not at the end of its wait.
        root.credentials.create_scope_map("late-push", (Permission("demo/late", PUSH_AND_LIST),))
        _, passwords = root.credentials.create_token("latepusher", "late-push")
        late = {"Authorization": aiohttp.encode_basic_auth("latepusher", passwords["password1"])}

        async def push_later() -> None:
            await asyncio.sleep(0.7)
            async with aiohttp.ClientSession(headers=late) as push:
                await push_image(push, root.server.url, "demo/late", make_image("late"), "v1")

        started = time.monotonic()
        _, polled = await asyncio.gather(
            push_later(), feed(http, root, f"cursor={answer['cursor']}&wait=20")
        )
        assert time.monotonic() - started < 10
        assert {c["repository"] for c in polled["changes"]} == {"demo/late"}

        # A wait with nothing to wait for ends with the wait.
        started = time.monotonic()
        idle = await feed(http, root, f"cursor={polled['cursor']}&wait=1")
        assert idle["changes"] == [] and 0.9 <= time.monotonic() - started < 5

        async with http.get(feed_url(root, "cursor=abc")) as response:
            assert response.status == 400
    # A client token may not read a registry's feed.
    client = {"Authorization": aiohttp.encode_basic_auth("client01", root.client_password)}
    async with (
        aiohttp.ClientSession(headers=client) as http,
        http.get(feed_url(root, "cursor=0")) as response,
    ):
        assert response.status == 403
        assert (await response.json())["errors"][0]["code"] == "DENIED"


@pytest.fixture
async def device(root: Root, tmp_path: Path) -> Path:
    password = root.create("edge01", ["demo/*"], mode="ReadOnly")
    folder = tmp_path / "device"
    result = await asyncio.to_thread(activate, folder, root.connection("edge01", password))
    assert result.returncode == 0, result.stderr
    return folder


def device_tags(device: Path, repository: str) -> list[str]:
    store = Store(device)
    try:
        if store.repository_id(repository) is None:
            return []
        return store.tags(repository, None, None)[0]
    finally:
        store.close()


async def test_a_device_reconciles_only_what_changed_and_idles_cheaply(
    root: Root, device: Path
) -> None:
    async with aiohttp.ClientSession(headers=pusher(root)) as http:
        await push_image(http, root.server.url, "demo/a", make_image("a1"), "v1")
        await push_image(http, root.server.url, "demo/b", make_image("b1"), "v1")

    full = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert full["sources"][0]["feed"] == "full"
    assert full["sources"][0]["repositoriesChecked"] == 2
    assert full["total"]["manifests"] == 2
    cursor = int(node_state(device)["changes_cursor"])

    async with aiohttp.ClientSession(headers=pusher(root)) as http:
        await push_image(http, root.server.url, "demo/b", make_image("b2"), "v2")
    changed = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    parent = changed["sources"][0]
    assert parent["feed"] == "changes"
    assert parent["repositoriesChecked"] == 1  # demo/b only; demo/a is not even listed
    assert changed["total"]["manifests"] == 1
    assert device_tags(device, "demo/b") == ["v1", "v2"]
    assert int(node_state(device)["changes_cursor"]) > cursor
    # settings + changes + Syncing + status, then demo/b: a token, its tags, two HEADs, the
    # manifest, its blobs and its referrers: fewer than the full run, which listed everything.
    assert changed["requests"] < full["requests"]

    idle = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert idle["sources"][0]["feed"] == "idle"
    assert idle["requests"] <= 3  # settings (304) + changes + status
    assert idle["settingsUpdated"] is False

    # A tag deleted on the root is deleted on the ReadOnly device at its next sync.
    async with (
        aiohttp.ClientSession(headers=pusher(root)) as http,
        http.delete(f"{root.server.url}/v2/demo/a/manifests/v1") as response,
    ):
        assert response.status == 202
    deleted = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert deleted["sources"][0]["repositoriesChecked"] == 1
    assert deleted["total"]["tagsDeleted"] == 1
    assert device_tags(device, "demo/a") == []


async def test_a_signature_attached_later_reaches_the_device_through_the_feed(
    root: Root, device: Path
) -> None:
    """A signature pushed by digest for an image the device already has: no tag moves, so only
    the feed's untagged `put` can tell the device; it arrives with the device's referrers."""
    image = make_image("signed-later")
    async with aiohttp.ClientSession(headers=pusher(root)) as http:
        await push_image(http, root.server.url, "demo/app", image, "v1")
    await asyncio.to_thread(sync_json, "--data-dir", str(device))
    signature = make_image(
        "the signature",
        layers=1,
        subject=descriptor(OCI_MANIFEST, image.manifest),
        artifact_type="application/vnd.example.signature",
    )
    async with aiohttp.ClientSession(headers=pusher(root)) as http:
        await push_image(http, root.server.url, "demo/app", signature)

    report = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    assert report["sources"][0]["feed"] == "changes"
    assert report["total"]["manifests"] == 1 and report["total"]["tagsMoved"] == 0
    store = Store(device)
    try:
        stored = store.manifest("demo/app", Digest.parse(signature.digest))
        assert stored is not None and stored.content == signature.manifest
        listed = store.referrers("demo/app", Digest.parse(image.digest), None)
        assert [r.digest for r in listed] == [signature.digest]
    finally:
        store.close()
    again = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert again["sources"][0]["feed"] == "idle"


async def test_a_cursor_older_than_retention_resets_to_a_correct_full_reconcile(
    root: Root, device: Path
) -> None:
    async with aiohttp.ClientSession(headers=pusher(root)) as http:
        await push_image(http, root.server.url, "demo/a", make_image("a1"), "v1")
        await push_image(http, root.server.url, "demo/b", make_image("b1"), "v1")
    await asyncio.to_thread(sync_json, "--data-dir", str(device))

    # While the device is away: new content, a deletion, and the root prunes its feed past the
    # device's cursor (as after a messageTtl): the deletion's row is gone with the rest.
    image = make_image("a2")
    async with aiohttp.ClientSession(headers=pusher(root)) as http:
        await push_image(http, root.server.url, "demo/a", image, "v2")
        async with http.delete(f"{root.server.url}/v2/demo/b/manifests/v1") as response:
            assert response.status == 202
        await push_image(http, root.server.url, "demo/c", make_image("c1"), "v1")
    long_ago = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    root.store.conn.execute("UPDATE changes SET time = ?", (long_ago,))
    newest = root.store.conn.execute("SELECT max(seq) FROM changes").fetchone()[0]
    assert prune_changes(root.hierarchy) > 0
    assert root.store.conn.execute("SELECT seq FROM changes").fetchall() == [(newest,)]

    report = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    assert report["sources"][0]["feed"] == "full"
    assert report["sources"][0]["errors"] == []
    assert device_tags(device, "demo/a") == ["v1", "v2"]
    assert device_tags(device, "demo/b") == []
    assert device_tags(device, "demo/c") == ["v1"]
    assert int(node_state(device)["changes_cursor"]) == newest
    store = Store(device)
    try:
        assert store.manifest("demo/a", "v2").content == image.manifest
        assert store.manifest("demo/a", "v2").media_type == OCI_MANIFEST
    finally:
        store.close()
    idle = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert idle["requests"] <= 3


def test_pruning_keeps_what_the_longest_ttl_needs(root: Root) -> None:
    root.create("edge01", ["demo/*"], message_ttl="P1D")
    root.create("edge02", ["demo/*"], message_ttl="P7D")
    store = root.store
    now = datetime.now(UTC)
    for days, repository in ((10, "demo/old"), (5, "demo/kept"), (0, "demo/new")):
        stamp = (now - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        store.conn.execute(
            "INSERT INTO changes (repository, op, tag, digest, origin, time) "
            "VALUES (?, 'put', 'v1', 'sha256:' || hex(randomblob(32)), 'local', ?)",
            (repository, stamp),
        )
    assert prune_changes(root.hierarchy, now) == 1
    left = [r for (r,) in store.conn.execute("SELECT repository FROM changes ORDER BY seq")]
    assert left == ["demo/kept", "demo/new"]


async def test_a_cursor_or_wait_that_is_not_a_number_it_can_use_is_400(root: Root) -> None:
    password = root.create("edge01", ["demo/*"], mode="ReadOnly")
    sync = {"Authorization": aiohttp.encode_basic_auth("edge01", password)}
    async with aiohttp.ClientSession(headers=sync) as http:
        # float() reads "inf", "1e400" and 400 nines as infinity, which is no cursor.
        for query in ("cursor=inf", "cursor=1e400", "cursor=" + "9" * 400, "cursor=-1",
                      "cursor=nan", "cursor=1.5", "cursor=x", "cursor=0&wait=-1"):
            async with http.get(feed_url(root, query)) as response:
                assert response.status == 400, (query, await response.text())
                (error,) = (await response.json())["errors"]
                assert error["code"] == "UNSUPPORTED", query
    assert "Traceback" not in root.server.log()
