"""An activated device syncs from its own root: real root process (auth on, loopback HTTP), a
real `activate`, content pushed to the root by a client token, `sync` on the device's data
directory, and the device's own server then serving the same bytes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
from support.cli import run as run_cli
from support.hierarchy import Root, activate, node_state
from support.oci import OCI_MANIFEST, digest_of, make_image, push_image
from support.sync import SilentParent, get, run_sync, sync_json

from appliance.auth.scopes import PUSH, Permission
from appliance.storage.store import Store

PUSH_AND_LIST = PUSH | {"metadata/read"}


def pusher(root: Root) -> dict[str, str]:
    root.credentials.create_scope_map("demo-push", (Permission("demo/*", PUSH_AND_LIST),))
    _, passwords = root.credentials.create_token("pusher", "demo-push")
    return {"Authorization": aiohttp.encode_basic_auth("pusher", passwords["password1"])}


async def test_a_device_replicates_what_was_pushed_to_its_root(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    password = root.create("edge01", ["demo/*"], mode="ReadOnly", client_tokens=["client01"])
    device = tmp_path / "device"
    activated = await asyncio.to_thread(activate, device, root.connection("edge01", password))
    assert activated.returncode == 0, activated.stderr
    image = make_image("from-the-root", layers=3)
    async with aiohttp.ClientSession(headers=pusher(root)) as http:
        await push_image(http, root.server.url, "demo/app", image, "v1")

    report = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    assert report["sources"][0]["source"] == f"parent {root.server.host}"
    assert report["sources"][0]["errors"] == []
    assert report["total"]["manifests"] == 1
    assert report["total"]["blobs"] == len(image.blobs)
    assert report["total"]["bytes"] == sum(len(b) for b in image.blobs)
    state = node_state(device)
    assert state["connection_state"] == "Online"
    assert state["last_sync_time"].endswith("Z")

    served = start_registry(data_dir=device, args=["--auth", "--insecure-http"])
    client = {"Authorization": aiohttp.encode_basic_auth("client01", root.client_password)}
    async with aiohttp.ClientSession(headers=client) as http:
        body, headers = await get(http, f"{served.url}/v2/demo/app/manifests/v1", OCI_MANIFEST)
        assert body == image.manifest
        assert headers["Docker-Content-Digest"] == image.digest
        for blob in image.blobs:
            body, _ = await get(http, f"{served.url}/v2/demo/app/blobs/{digest_of(blob)}")
            assert body == blob

    again = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert again["total"]["manifests"] == again["total"]["bytes"] == 0


async def test_an_unreachable_parent_is_reported_and_recorded_offline(
    root: Root, tmp_path: Path
) -> None:
    password = root.create("edge01", ["demo/app"], mode="ReadOnly")
    device = tmp_path / "device"
    activated = await asyncio.to_thread(activate, device, root.connection("edge01", password))
    assert activated.returncode == 0, activated.stderr
    root.server.stop()

    result = await asyncio.to_thread(run_sync, "--data-dir", str(device))

    assert result.returncode == 1
    line = result.stderr.strip()
    assert line.startswith(f"Error: PARENT_UNREACHABLE: cannot reach {root.server.host}")
    assert len(line.splitlines()) == 1
    assert node_state(device)["connection_state"] == "Offline"
    assert json.loads(node_state(device)["settings"])["repositories"] == ["demo/app"]


def cloud(root: Root, *args: str) -> dict:
    """`connected-registry cloud …` on the root's data directory, its JSON answer."""
    result = run_cli("cloud", *args, "--data-dir", str(root.server.data_dir), "--output", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def device_tags(device: Path, repository: str) -> list[str]:
    store = Store(device)
    try:
        return store.tags(repository, None, None)[0]
    finally:
        store.close()


async def test_a_device_created_with_a_semver_range_syncs_only_the_versions_in_it(
    root: Root, tmp_path: Path
) -> None:
    made = cloud(root, "create", "edge01", "--repository", "demo/*", "--mode", "ReadOnly",
                 "--tag-semver", ">=1.2 <2")
    assert made["tagSemver"] == ">=1.2 <2"
    password = root.credentials.generate_password("edge01", "password1")
    device = tmp_path / "device"
    activated = await asyncio.to_thread(activate, device, root.connection("edge01", password))
    assert activated.returncode == 0, activated.stderr
    tags = ["1.1.0", "1.2.0", "v1.4.2", "1.9.9-rc.1", "1.5", "2.0.0", "latest"]
    async with aiohttp.ClientSession(headers=pusher(root)) as http:
        for tag in tags:
            await push_image(http, root.server.url, "demo/app", make_image(f"semver {tag}"), tag)

    await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert device_tags(device, "demo/app") == ["1.2.0", "v1.4.2"]

    # The new range reaches the device with its settings; the next sync applies it.
    assert cloud(root, "update", "edge01", "--tag-semver", ">=1.2")["tagSemver"] == ">=1.2"
    await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert device_tags(device, "demo/app") == ["1.2.0", "2.0.0", "v1.4.2"]


async def test_a_parent_that_accepts_and_never_answers_is_unreachable_within_seconds(
    root: Root, tmp_path: Path
) -> None:
    password = root.create("edge01", ["demo/app"], mode="ReadOnly")
    device = tmp_path / "device"
    activated = await asyncio.to_thread(activate, device, root.connection("edge01", password))
    assert activated.returncode == 0, activated.stderr
    root.server.stop()
    silent = await SilentParent(root.server.port).start()
    try:
        # Generous, but under the 15 s a settings request used to be given.
        result = await asyncio.to_thread(run_sync, "--data-dir", str(device), timeout=13)
    finally:
        await silent.stop()

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: PARENT_UNREACHABLE: cannot reach {root.server.host}: no answer within 5 s"
    )
    assert silent.connections == 1
    assert node_state(device)["connection_state"] == "Offline"
