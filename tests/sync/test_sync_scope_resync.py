"""A repository leaving a ReadOnly device's scope is removed from it, and `connected-registry
resync` on a device makes its next sync a full reconcile (both ways on a ReadWrite device).
Real processes: a root served with auth, devices activated against it, `sync` and `resync` in
child processes, the device's own server for what clients see."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
from support.cli import clean_env
from support.hierarchy import Root, activate
from support.oci import OCI_MANIFEST, make_image, push_image
from support.sync import DistributionRegistry, sync_json

from appliance.auth.scopes import PUSH, Permission
from appliance.storage.layout import Layout
from appliance.storage.store import Origin, Store

WRITER = PUSH | {"metadata/read", "content/delete"}


def writer(root: Root) -> dict[str, str]:
    root.credentials.create_scope_map("demo-write", (Permission("demo/*", WRITER),))
    _, passwords = root.credentials.create_token("writer", "demo-write")
    return {"Authorization": aiohttp.encode_basic_auth("writer", passwords["password1"])}


async def device_of(root: Root, tmp_path: Path, repositories: list[str], **kw: object) -> Path:
    password = root.create("edge01", repositories, **kw)
    device = tmp_path / "device"
    activated = await asyncio.to_thread(activate, device, root.connection("edge01", password))
    assert activated.returncode == 0, activated.stderr
    return device


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def repositories(device: Path) -> list[str]:
    store = Store(device)
    try:
        return store.repositories(None, None)[0]
    finally:
        store.close()


def tag_digest(device: Path, repository: str, tag: str) -> str | None:
    store = Store(device)
    try:
        found = store.manifest(repository, tag)
        return found.digest if found else None
    finally:
        store.close()


async def test_a_repository_leaving_a_read_only_scope_is_removed(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    mirror = DistributionRegistry(tmp_path / "distribution").start()
    try:
        auth = writer(root)
        async with aiohttp.ClientSession(headers=auth) as http:
            await push_image(http, root.server.url, "demo/app", make_image("app"), "v1")
            await push_image(http, root.server.url, "demo/old", make_image("old"), "v1")
        async with aiohttp.ClientSession() as http:
            await push_image(http, mirror.url, "vendor/tool", make_image("tool"), "v1")
        device = await device_of(
            root, tmp_path, ["demo/app", "demo/old"], mode="ReadOnly", client_tokens=["writer"]
        )
        # The device also mirrors a plain upstream: that repository is in the config's scope.
        config = tmp_path / "device.toml"
        config.write_text(
            f'data_dir = "{device}"\n[[upstream]]\nurl = "{mirror.url}"\n'
            'repositories = ["vendor/tool"]\n'
        )
        first = await asyncio.to_thread(sync_json, "--config", str(config))
        assert first["sources"][0]["errors"] == []
        assert repositories(device) == ["demo/app", "demo/old", "vendor/tool"]

        root.hierarchy.update_permissions("edge01", remove=["demo/old"])
        dry = await asyncio.to_thread(sync_json, "--config", str(config), "--dry-run")
        assert dry["sources"][0]["repositoriesRemoved"] == ["demo/old"]
        assert repositories(device) == ["demo/app", "demo/old", "vendor/tool"]

        second = await asyncio.to_thread(sync_json, "--config", str(config))

        assert second["sources"][0]["feed"] == "full"  # the scope changed
        assert second["sources"][0]["repositoriesRemoved"] == ["demo/old"]
        assert repositories(device) == ["demo/app", "vendor/tool"]
        # What a client sees on the device: the repository is gone, the rest is served.
        served = start_registry(data_dir=device, args=["--auth", "--insecure-http"])
        async with aiohttp.ClientSession(headers=auth) as http:
            accept = {"Accept": OCI_MANIFEST}
            async with http.get(f"{served.url}/v2/demo/old/manifests/v1", headers=accept) as r:
                assert r.status == 404
            async with http.get(f"{served.url}/v2/demo/app/manifests/v1", headers=accept) as r:
                assert r.status == 200
        # Nothing left pointing at the removed repository; the next run removes nothing more.
        with sqlite3.connect(Layout(device).database) as db:
            keys = [k for (k,) in db.execute("SELECT key FROM node_state") if "demo/old" in k]
        assert keys == []
        third = await asyncio.to_thread(sync_json, "--config", str(config))
        assert third["sources"][0]["repositoriesRemoved"] == []
    finally:
        mirror.stop()


async def test_a_read_write_device_keeps_repositories_that_leave_its_scope(
    root: Root, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession(headers=writer(root)) as http:
        await push_image(http, root.server.url, "demo/old", make_image("old"), "v1")
    device = await device_of(root, tmp_path, ["demo/*"], mode="ReadWrite")
    await asyncio.to_thread(sync_json, "--data-dir", str(device))
    root.hierarchy.update_permissions("edge01", add=["demo/app"], remove=["demo/*"])

    report = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    assert report["sources"][0]["repositoriesRemoved"] == []
    assert "demo/old" in repositories(device)


async def test_resync_on_a_device_reconciles_fully_once(root: Root, tmp_path: Path) -> None:
    image = make_image("app")
    async with aiohttp.ClientSession(headers=writer(root)) as http:
        await push_image(http, root.server.url, "demo/app", image, "v1")
    device = await device_of(root, tmp_path, ["demo/app"], mode="ReadOnly")
    await asyncio.to_thread(sync_json, "--data-dir", str(device))
    # The replica loses a tag behind the feed's back (a restored backup, a hand edit).
    store = Store(device)
    store.delete_tag("demo/app", "v1", origin=Origin.PARENT)
    store.close()
    idle = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert idle["sources"][0]["feed"] == "idle"
    assert tag_digest(device, "demo/app", "v1") is None

    asked = cli("resync", "--data-dir", str(device))
    assert asked.returncode == 0, asked.stderr
    assert "next sync reconciles everything" in asked.stdout

    full = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    assert full["sources"][0]["feed"] == "full"
    assert tag_digest(device, "demo/app", "v1") == image.digest
    after = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert after["sources"][0]["feed"] == "idle"  # done once, not every run


async def test_resync_on_a_read_write_device_pushes_its_own_content_again(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    auth = writer(root)
    device = await device_of(root, tmp_path, ["demo/*"], mode="ReadWrite", client_tokens=["writer"])
    served = start_registry(data_dir=device, args=["--auth", "--insecure-http"])
    image = make_image("made-here")
    async with aiohttp.ClientSession(headers=auth) as http:
        await push_image(http, served.url, "demo/local", image, "v1")
    served.stop()
    # The outbox is lost (the state an operator would resync to repair).
    with sqlite3.connect(Layout(device).database) as db:
        db.execute("DELETE FROM outbox")
    nothing = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert nothing["sources"][0]["push"]["rows"] == 0

    asked = cli("resync", "--data-dir", str(device), "--output", "json")
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["pushReconcile"] == ["demo/local"]
    await asyncio.to_thread(sync_json, "--data-dir", str(device))

    async with aiohttp.ClientSession(headers=auth) as http:
        url = f"{root.server.url}/v2/demo/local/manifests/v1"
        async with http.get(url, headers={"Accept": OCI_MANIFEST}) as response:
            assert response.status == 200
            assert await response.read() == image.manifest


def test_resync_on_a_node_without_a_parent_is_one_line(tmp_path: Path, root: Root) -> None:
    result = cli("resync", "--data-dir", str(tmp_path / "root"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: NOT_ACTIVATED: {tmp_path / 'root'} is not an activated connected registry "
        "(on a root, `connected-registry cloud resync NAME` asks one of its devices)"
    ]
