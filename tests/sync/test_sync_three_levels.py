"""Three-level sync, both ways, with real processes on loopback.

root (served with auth over loopback HTTP; its resources made in-process on its data directory)
  └─ edge01 (ReadWrite, demo/*; activated against the root, served on its own data directory)
       ├─ shelf01 (ReadOnly, demo/app*; activated through edge01, served)
       └─ sub01 (ReadWrite, demo/sub*; activated through edge01, served)

Every `activate` and `sync` is the real command in a child process. edge01 serves the change
feed of its children from its own content, and its `/v2/` takes their sync tokens: shelf01 and
sub01 pull from it, sub01 pushes to it, and edge01's own sync carries sub01's pushes to the root.
The tests share the tree (module scope) and run in file order: later ones build on the content
earlier ones moved.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import oci_layout
from support.hierarchy import Root, activate, make_root
from support.oci import OCI_MANIFEST, digest_of, make_image, push_image
from support.server import RegistryProcess
from support.sync import get, sync_json

from appliance.auth.scopes import PUSH, Permission
from appliance.control.feed import prune_changes_for_descendants, read_changes
from appliance.control.node import NodeState
from appliance.storage.layout import Layout
from appliance.storage.store import Store

SERVE = ["--auth", "--insecure-http"]
WRITER = PUSH | {"metadata/read", "content/delete"}
EDGE, SHELF, SUB = "edge01", "shelf01", "sub01"
# Pushed to edge01 by a client; shelf01's scope takes it in later.
MIDDLE_IMAGE = make_image("made-on-the-middle", layers=2)


@dataclass
class Tree:
    root: Root
    edge: RegistryProcess
    shelf: RegistryProcess
    sub: RegistryProcess
    writer: dict[str, str]
    writer_password: str
    sync_passwords: dict[str, str]
    tmp: Path

    def sync(self, server: RegistryProcess) -> dict[str, Any]:
        """`connected-registry sync` on that node's data directory; its JSON report."""
        return sync_json("--data-dir", str(server.data_dir))

    def feed_auth(self, token: str, password: str | None = None) -> dict[str, str]:
        """Basic credentials of a sync token, as a child sends them to the gateway."""
        secret = self.sync_passwords[token] if password is None else password
        return {"Authorization": aiohttp.encode_basic_auth(token, secret)}


def _activated(data_dir: Path, connection: Any, *args: str) -> None:
    result = activate(data_dir, connection, *args)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    tmp = tmp_path_factory.mktemp("three-levels")
    servers: list[RegistryProcess] = []

    def serve(data_dir: Path, args: list[str] = SERVE) -> RegistryProcess:
        servers.append(RegistryProcess(data_dir, args))
        return servers[-1]

    try:
        root = make_root(lambda data_dir, args: serve(data_dir, args).start(), tmp / "root", SERVE)
        root.credentials.create_scope_map("demo-write", (Permission("demo/*", WRITER),))
        _, passwords = root.credentials.create_token("writer", "demo-write")
        writer_password = passwords["password1"]
        sync_passwords = {
            EDGE: root.create(EDGE, ["demo/*"], mode="ReadWrite", client_tokens=["writer"])
        }
        # The whole tree is made on the root first, then activated top-down, as an operator
        # does: edge01's activation brings its children's sync tokens with it.
        for name, mode, scope in (
            (SHELF, "ReadOnly", "demo/app*"),
            (SUB, "ReadWrite", "demo/sub*"),
        ):
            sync_passwords[name] = root.create(
                name, [scope], mode=mode, parent=EDGE, client_tokens=["writer"]
            )
        edge = serve(tmp / EDGE)
        _activated(
            edge.data_dir, root.connection(EDGE, sync_passwords[EDGE]), "--login-server", edge.host
        )
        edge.start()
        children = {}
        for name in (SHELF, SUB):
            _activated(tmp / name, root.connection(name, sync_passwords[name], port=edge.port))
            children[name] = serve(tmp / name).start()
        auth = {"Authorization": aiohttp.encode_basic_auth("writer", writer_password)}
        yield Tree(
            root, edge, children[SHELF], children[SUB], auth, writer_password, sync_passwords, tmp
        )
    finally:
        for server in servers:
            server.stop()
    root.store.close()


def outbox(data_dir: Path) -> list[tuple[str, str, str | None, str]]:
    with sqlite3.connect(Layout(data_dir).database) as db:
        return db.execute("SELECT repository, op, tag, digest FROM outbox ORDER BY seq").fetchall()


def fed_repositories(data_dir: Path) -> set[str]:
    """Every repository the node's own change feed has a row for."""
    with sqlite3.connect(Layout(data_dir).database) as db:
        return {row[0] for row in db.execute("SELECT DISTINCT repository FROM changes")}


def skopeo_push(layout: Path, tag: str, destination: str, credentials: str) -> None:
    result = subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            credentials,
            f"oci:{layout}:{tag}",
            f"docker://{destination}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr


def parent_of(report: dict[str, Any]) -> dict[str, Any]:
    source = report["sources"][0]
    assert source["source"].startswith("parent "), source
    return source


async def assert_serves(
    server: RegistryProcess,
    auth: dict[str, str],
    repository: str,
    tag: str,
    blobs: dict[str, bytes],
    manifest: bytes,
) -> None:
    """The server answers `repository:tag` with exactly `manifest`, and every blob byte-exact."""
    async with aiohttp.ClientSession(headers=auth) as http:
        body, headers = await get(
            http, f"{server.url}/v2/{repository}/manifests/{tag}", OCI_MANIFEST
        )
        assert body == manifest
        assert headers["Docker-Content-Digest"] == digest_of(manifest)
        for digest, data in blobs.items():
            if digest == digest_of(manifest):
                continue
            body, _ = await get(http, f"{server.url}/v2/{repository}/blobs/{digest}")
            assert body == data, f"{repository}: blob {digest} differs"


# -- down: root → middle → grandchild ----------------------------------------------------------


async def test_an_image_pushed_to_the_root_with_skopeo_reaches_the_read_only_grandchild(
    tree: Tree,
) -> None:
    layout = oci_layout.Layout(tree.tmp / "layout")
    image = layout.add_image("from-the-root", layers=3)
    layout.tag(image, "v1")
    skopeo_push(
        layout.path,
        "v1",
        f"{tree.root.server.host}/demo/app:v1",
        f"writer:{tree.writer_password}",
    )
    content = oci_layout.closure(layout.path, image["digest"])
    manifest = content[image["digest"]]

    middle = tree.sync(tree.edge)
    assert parent_of(middle)["errors"] == []
    assert middle["total"]["manifests"] == 1
    # Pulled from the root: never echoed back up.
    assert outbox(tree.edge.data_dir) == []

    first = tree.sync(tree.shelf)
    assert parent_of(first)["errors"] == []
    assert first["total"]["manifests"] == 1
    await assert_serves(tree.shelf, tree.writer, "demo/app", "v1", content, manifest)

    # Nothing changed on edge01 since: its feed says so, and the run is three requests
    # (settings 304, changes, status) moving nothing.
    second = tree.sync(tree.shelf)
    assert parent_of(second)["feed"] == "idle"
    assert second["requests"] <= 3
    assert second["total"]["manifests"] == second["total"]["blobs"] == 0


# -- up: middle → root ------------------------------------------------------------------------


async def test_an_image_pushed_to_the_read_write_middle_reaches_the_root(tree: Tree) -> None:
    image = MIDDLE_IMAGE
    async with aiohttp.ClientSession(headers=tree.writer) as http:
        await push_image(http, tree.edge.url, "demo/edge-made", image, "v1")
    assert len(outbox(tree.edge.data_dir)) == 2  # the manifest, then the tag

    report = tree.sync(tree.edge)

    pushed = parent_of(report)["push"]
    assert parent_of(report)["errors"] == []
    assert pushed["rows"] == 2 and pushed["conflicts"] == []
    assert outbox(tree.edge.data_dir) == []
    blobs = {digest_of(blob): blob for blob in image.blobs}
    await assert_serves(
        tree.root.server, tree.writer, "demo/edge-made", "v1", blobs, image.manifest
    )


# -- the ReadOnly grandchild ------------------------------------------------------------------


async def test_the_read_only_grandchild_refuses_pushes(tree: Tree) -> None:
    before = outbox(tree.shelf.data_dir), fed_repositories(tree.shelf.data_dir)
    image = make_image("refused")
    # `writer` may push on demo/*: the refusal is the mode's, not the token's.
    async with aiohttp.ClientSession(headers=tree.writer) as http:
        async with http.post(f"{tree.shelf.url}/v2/demo/app/blobs/uploads/") as response:
            assert response.status == 403
            error = (await response.json())["errors"][0]
        async with http.put(
            f"{tree.shelf.url}/v2/demo/app/manifests/v2",
            data=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        ) as response:
            assert response.status == 403
            assert (await response.json())["errors"][0]["code"] == "DENIED"
        async with http.head(f"{tree.shelf.url}/v2/demo/app/manifests/v2") as response:
            assert response.status == 404
    assert error["code"] == "DENIED"
    assert "ReadOnly" in error["message"]
    assert (outbox(tree.shelf.data_dir), fed_repositories(tree.shelf.data_dir)) == before


# -- up two levels: ReadWrite grandchild → middle → root ----------------------------------------


async def test_a_read_write_grandchilds_push_reaches_the_middle_then_the_root(tree: Tree) -> None:
    image = make_image("made-on-the-grandchild", layers=3)
    blobs = {digest_of(blob): blob for blob in image.blobs}
    async with aiohttp.ClientSession(headers=tree.writer) as http:
        await push_image(http, tree.sub.url, "demo/sub-tool", image, "v1")

    up_one = tree.sync(tree.sub)

    assert parent_of(up_one)["errors"] == []
    assert parent_of(up_one)["push"]["rows"] == 2
    assert parent_of(up_one)["push"]["conflicts"] == []
    await assert_serves(tree.edge, tree.writer, "demo/sub-tool", "v1", blobs, image.manifest)
    # Arrived through edge01's /v2/ with sub01's sync token: edge01's own write, to go up.
    assert outbox(tree.edge.data_dir) == [
        ("demo/sub-tool", "put", None, image.digest),
        ("demo/sub-tool", "put", "v1", image.digest),
    ]

    up_two = tree.sync(tree.edge)

    assert parent_of(up_two)["errors"] == []
    assert parent_of(up_two)["push"]["rows"] == 2
    assert parent_of(up_two)["push"]["conflicts"] == []
    await assert_serves(tree.root.server, tree.writer, "demo/sub-tool", "v1", blobs, image.manifest)
    assert outbox(tree.edge.data_dir) == []

    # The root's feed now names demo/sub-tool: edge01 pulls it back as the root's, which is no
    # conflict and no new outbox row; sub01 then finds it unchanged.
    again = tree.sync(tree.edge)
    assert parent_of(again)["errors"] == []
    assert parent_of(again)["push"]["rows"] == 0
    assert parent_of(again)["push"]["conflicts"] == []
    assert again["total"]["tagsMoved"] == again["total"]["manifests"] == 0
    assert outbox(tree.edge.data_dir) == []
    below = tree.sync(tree.sub)
    assert parent_of(below)["errors"] == []
    assert parent_of(below)["push"]["conflicts"] == []
    assert below["total"]["tagsMoved"] == below["total"]["tagsDeleted"] == 0
    await assert_serves(tree.sub, tree.writer, "demo/sub-tool", "v1", blobs, image.manifest)
    # What the root shows: both reported a clean last sync (sub01's through edge01).
    for name in (EDGE, SUB):
        shown = tree.root.hierarchy.get(name)
        assert shown.last_sync_time is not None
        assert shown.status_details == (), name


# -- a grandchild's settings change on the root ---------------------------------------------------


async def test_a_grandchild_whose_scope_widened_pulls_from_the_middle_at_once(tree: Tree) -> None:
    tree.root.hierarchy.update_permissions(SHELF, add=["demo/edge-made"])

    # No edge01 sync in between: relaying shelf01's changed settings, edge01 refreshed its own,
    # so shelf01's sync token may read demo/edge-made there and its feed covers it.
    widened = tree.sync(tree.shelf)

    assert parent_of(widened)["errors"] == []
    assert parent_of(widened)["feed"] == "full"
    blobs = {digest_of(blob): blob for blob in MIDDLE_IMAGE.blobs}
    await assert_serves(
        tree.shelf, tree.writer, "demo/edge-made", "v1", blobs, MIDDLE_IMAGE.manifest
    )
    image = make_image("the-widened-scope-moves")
    async with aiohttp.ClientSession(headers=tree.writer) as http:
        await push_image(http, tree.edge.url, "demo/edge-made", image, "v2")
    followed = tree.sync(tree.shelf)
    assert parent_of(followed)["feed"] == "changes"
    assert followed["total"]["tagsMoved"] == 1
    blobs = {digest_of(blob): blob for blob in image.blobs}
    await assert_serves(tree.shelf, tree.writer, "demo/edge-made", "v2", blobs, image.manifest)
    assert parent_of(tree.sync(tree.edge))["push"]["rows"] == 2
    assert outbox(tree.edge.data_dir) == []


# -- the middle's change feed -----------------------------------------------------------------


async def feed(
    tree: Tree, name: str, auth: dict[str, str], cursor: int, wait: float = 0
) -> tuple[int, dict[str, Any]]:
    url = f"{tree.edge.url}/gateway/v1/registries/{name}/changes"
    async with (
        aiohttp.ClientSession(headers=auth) as http,
        http.get(url, params={"cursor": str(cursor), "wait": f"{wait:g}"}) as response,
    ):
        return response.status, await response.json()


async def test_the_middles_feed_is_scoped_and_authorized_per_grandchild(tree: Tree) -> None:
    # edge01's own table has rows for repositories outside shelf01's scope...
    assert {"demo/app", "demo/edge-made", "demo/sub-tool"} <= fed_repositories(tree.edge.data_dir)

    status, answer = await feed(tree, SHELF, tree.feed_auth(SHELF), cursor=1)

    assert status == 200, answer
    assert answer["reset"] is False
    # ...which shelf01 (demo/app*, and demo/edge-made since its scope widened) never sees.
    assert {change["repository"] for change in answer["changes"]} == {"demo/app", "demo/edge-made"}
    _, sub_answer = await feed(tree, SUB, tree.feed_auth(SUB), cursor=1)
    assert {change["repository"] for change in sub_answer["changes"]} == {"demo/sub-tool"}

    status, first = await feed(tree, SHELF, tree.feed_auth(SHELF), cursor=0)
    assert (status, first["reset"]) == (200, True)

    status, refused = await feed(tree, SHELF, tree.feed_auth(SHELF, "wrong-password"), cursor=1)
    assert (status, refused["errors"][0]["code"]) == (401, "UNAUTHORIZED")
    status, refused = await feed(tree, SHELF, tree.feed_auth(SUB), cursor=1)
    assert (status, refused["errors"][0]["code"]) == (403, "DENIED")

    started = time.monotonic()
    status, held = await feed(tree, SHELF, tree.feed_auth(SHELF), cursor=answer["cursor"], wait=1)
    assert (status, held["changes"], held["reset"]) == (200, [], False)
    assert time.monotonic() - started >= 0.9  # held for the wait, as nothing changed


async def test_the_middle_serves_its_feed_while_the_root_is_down(tree: Tree) -> None:
    # Before the outage shelf01 has synced from a feed with rows, so it holds a cursor on
    # edge01's feed (a first sync, or one from an empty feed, is a full reconcile), and
    # edge01's outbox is empty: this holds whichever tests ran before.
    before = make_image("before-the-outage")
    async with aiohttp.ClientSession(headers=tree.writer) as http:
        await push_image(http, tree.edge.url, "demo/app", before, "pre-outage")
    assert parent_of(tree.sync(tree.edge))["errors"] == []
    assert parent_of(tree.sync(tree.shelf))["errors"] == []
    image = make_image("made-while-the-root-is-down")
    tree.root.server.stop()
    try:
        async with aiohttp.ClientSession(headers=tree.writer) as http:
            await push_image(http, tree.edge.url, "demo/app", image, "v2")

        report = tree.sync(tree.shelf)

        # Settings from edge01's cache, the feed from its own content, the status queued.
        assert parent_of(report)["errors"] == []
        assert parent_of(report)["feed"] == "changes"
        assert report["total"]["tagsMoved"] == 1
        blobs = {digest_of(blob): blob for blob in image.blobs}
        await assert_serves(tree.shelf, tree.writer, "demo/app", "v2", blobs, image.manifest)
    finally:
        tree.root.server.start()
    up = tree.sync(tree.edge)
    assert parent_of(up)["errors"] == []
    assert parent_of(up)["push"]["rows"] == 2
    await assert_serves(tree.root.server, tree.writer, "demo/app", "v2", blobs, image.manifest)


# -- deletes by digest travel down ------------------------------------------------------------


async def _status(tree: Tree, server: RegistryProcess, repo: str, reference: str) -> int:
    url = f"{server.url}/v2/{repo}/manifests/{reference}"
    async with (
        aiohttp.ClientSession(headers=tree.writer) as http,
        http.head(url) as response,
    ):
        return response.status


async def test_a_delete_by_digest_on_the_root_reaches_the_read_only_grandchild(tree: Tree) -> None:
    image = make_image("deleted-at-the-root")
    async with aiohttp.ClientSession(headers=tree.writer) as http:
        await push_image(http, tree.root.server.url, "demo/app-gone", image, "v1")
    assert parent_of(tree.sync(tree.edge))["errors"] == []
    assert parent_of(tree.sync(tree.shelf))["errors"] == []
    assert await _status(tree, tree.shelf, "demo/app-gone", image.digest) == 200
    async with aiohttp.ClientSession(headers=tree.writer) as http:
        url = f"{tree.root.server.url}/v2/demo/app-gone/manifests/{image.digest}"
        async with http.delete(url) as response:
            assert response.status == 202, await response.text()

    middle = tree.sync(tree.edge)
    assert parent_of(middle)["errors"] == []
    assert middle["total"]["manifestsDeleted"] == 1
    # The middle's delete came from its parent: never replayed upward.
    assert outbox(tree.edge.data_dir) == []
    assert await _status(tree, tree.edge, "demo/app-gone", image.digest) == 404
    low = tree.sync(tree.shelf)
    assert parent_of(low)["errors"] == []
    assert low["total"]["manifestsDeleted"] == 1
    assert await _status(tree, tree.shelf, "demo/app-gone", image.digest) == 404
    assert await _status(tree, tree.shelf, "demo/app-gone", "v1") == 404


async def test_a_read_write_middle_keeps_a_manifest_it_tagged_itself(tree: Tree) -> None:
    image = make_image("kept-by-the-middle")
    async with aiohttp.ClientSession(headers=tree.writer) as http:
        await push_image(http, tree.root.server.url, "demo/kept", image, "v1")
    assert parent_of(tree.sync(tree.edge))["errors"] == []
    async with aiohttp.ClientSession(headers=tree.writer) as http:
        url = f"{tree.root.server.url}/v2/demo/kept/manifests/{image.digest}"
        async with http.delete(url) as response:
            assert response.status == 202, await response.text()
        # Meanwhile a client tags it on edge01: edge01 changed it, so it is edge01's to keep.
        await push_image(http, tree.edge.url, "demo/kept", image, "mine")

    report = tree.sync(tree.edge)
    assert parent_of(report)["errors"] == []
    assert report["total"]["manifestsDeleted"] == 0
    assert await _status(tree, tree.edge, "demo/kept", "mine") == 200
    assert await _status(tree, tree.edge, "demo/kept", image.digest) == 200


# -- retention on a middle node -----------------------------------------------------------------


def test_a_middle_prunes_its_feed_by_its_descendants_longest_ttl(tmp_path: Path) -> None:
    store = Store(tmp_path / "middle")
    try:
        node = NodeState(store)
        node.set("role", "connected")
        grandchild = {"name": "deep01", "messageTtl": "P7D", "descendants": []}
        child = {"name": "child01", "messageTtl": "P1D", "descendants": [grandchild]}
        node.set("settings", json.dumps({"name": "middle01", "descendants": [child]}))
        now = datetime.now(UTC)
        for days, repository in (
            (10, "demo/old"),
            (9, "demo/old"),
            (5, "demo/kept"),
            (0, "demo/new"),
        ):
            stamp = (now - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            store.conn.execute(
                "INSERT INTO changes (repository, op, tag, digest, origin, time) "
                "VALUES (?, 'put', 'v1', 'sha256:' || hex(randomblob(32)), 'parent', ?)",
                (repository, stamp),
            )

        assert prune_changes_for_descendants(store, now) == 2

        left = [r for (r,) in store.conn.execute("SELECT repository FROM changes ORDER BY seq")]
        assert left == ["demo/kept", "demo/new"]
        # A child whose cursor is behind what was pruned reconciles fully; one that had read
        # everything pruned goes on from where it was.
        assert read_changes(store.feed, ("demo/*",), 1)["reset"] is True
        kept = read_changes(store.feed, ("demo/*",), 2)
        assert kept["reset"] is False
        assert [c["repository"] for c in kept["changes"]] == ["demo/kept", "demo/new"]
        # Long past every TTL, the newest row still stays: sequence numbers never restart.
        assert prune_changes_for_descendants(store, now + timedelta(days=365)) == 1
        assert store.conn.execute("SELECT count(*) FROM changes").fetchone()[0] == 1
    finally:
        store.close()
