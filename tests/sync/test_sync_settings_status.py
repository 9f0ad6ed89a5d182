"""Each sync run fetches the device's settings from its root (If-None-Match) and reports its
status back: a real root process, a real `activate`, `sync` in a child process, the root's view
through `cloud show`. Also the sync window, from the settings, gating and stopping a run."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from support.cli import run
from support.hierarchy import Root, activate, node_state
from support.oci import make_image, push_image
from support.server import free_port
from support.sync import run_sync, sync_json

from appliance.auth.scopes import PUSH, Permission
from appliance.auth.tokens import Credentials
from appliance.cli.options import load
from appliance.storage.store import Store
from appliance.sync import run as sync_run

PUSH_AND_LIST = PUSH | {"metadata/read"}
PULL = frozenset({"content/read", "metadata/read"})


def pusher(root: Root) -> dict[str, str]:
    root.credentials.create_scope_map("demo-push", (Permission("demo/*", PUSH_AND_LIST),))
    _, passwords = root.credentials.create_token("pusher", "demo-push")
    return {"Authorization": aiohttp.encode_basic_auth("pusher", passwords["password1"])}


def shown(root: Root, tmp_path: Path, name: str) -> dict:
    """`cloud show NAME --output json` on the root, as its operator runs it."""
    result = run("cloud", "show", name, "--data-dir", str(tmp_path / "root"), "--output", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def activated_device(
    root: Root, tmp_path: Path, repositories: list[str], **kw: object
) -> Path:
    password = root.create("edge01", repositories, mode="ReadOnly", **kw)
    device = tmp_path / "device"
    result = await asyncio.to_thread(activate, device, root.connection("edge01", password))
    assert result.returncode == 0, result.stderr
    return device


def has_manifest(device: Path, repository: str, tag: str) -> bool:
    store = Store(device)
    try:
        return store.manifest(repository, tag) is not None
    finally:
        store.close()


async def test_settings_changed_on_the_root_take_effect_at_the_next_sync(
    root: Root, tmp_path: Path
) -> None:
    device = await activated_device(root, tmp_path, ["demo/app"], client_tokens=["client01"])
    async with aiohttp.ClientSession(headers=pusher(root)) as http:
        await push_image(http, root.server.url, "demo/app", make_image("app"), "v1")
        await push_image(http, root.server.url, "demo/other", make_image("other"), "v1")

    first = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert first["settingsUpdated"] is False  # activation stored them; the root said 304
    assert has_manifest(device, "demo/app", "v1")
    assert not has_manifest(device, "demo/other", "v1")
    etag = node_state(device)["settings_etag"]

    # On the root: a new client token, and one more repository for the device.
    root.credentials.create_scope_map("other-pull", (Permission("demo/other", PULL),))
    _, passwords = root.credentials.create_token("client02", "other-pull")
    root.hierarchy.update("edge01", add_client_tokens=["client02"], log_level="Debug")
    root.hierarchy.update_permissions("edge01", add=["demo/other"])

    second = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    assert second["settingsUpdated"] is True
    assert second["sources"][0]["errors"] == []
    assert second["sources"][0]["feed"] == "full"  # the scope changed: reconcile all of it
    assert has_manifest(device, "demo/other", "v1")
    state = node_state(device)
    assert state["settings_etag"] != etag
    settings = json.loads(state["settings"])
    assert settings["repositories"] == ["demo/app", "demo/other"]
    assert settings["logLevel"] == "Debug"
    store = Store(device)
    try:
        credentials = Credentials(store.db)
        token = await credentials.authenticate("client02", passwords["password1"])
        assert token is not None and token.name == "client02"
        assert await credentials.authenticate("client01", root.client_password) is not None
    finally:
        store.close()

    # A token removed on the root is gone from the device after its next sync.
    root.hierarchy.update("edge01", remove_client_tokens=["client02"])
    await asyncio.to_thread(sync_json, "--data-dir", str(device))
    store = Store(device)
    try:
        assert await Credentials(store.db).authenticate("client02", passwords["password1"]) is None
    finally:
        store.close()


async def test_the_status_shows_on_the_root(root: Root, tmp_path: Path) -> None:
    device = await activated_device(root, tmp_path, ["demo/app"])
    async with aiohttp.ClientSession(headers=pusher(root)) as http:
        await push_image(http, root.server.url, "demo/app", make_image("app"), "v1")
    before = shown(root, tmp_path, "edge01")
    assert before["lastSyncTime"] is None

    await asyncio.to_thread(sync_json, "--data-dir", str(device))

    after = shown(root, tmp_path, "edge01")
    assert after["connectionState"] == "Online"
    assert after["lastSyncTime"] is not None
    assert after["statusDetails"] == []
    assert after["version"]
    assert after["loginServer"] == node_state(device)["login_server"]


async def test_a_failed_run_shows_unhealthy_with_status_details(
    root: Root, tmp_path: Path
) -> None:
    device = await activated_device(root, tmp_path, ["demo/app"])
    # The injected failure: a plain upstream nobody listens on.
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "device.toml"
    config.write_text(f'[[upstream]]\nurl = "{dead}"\nrepositories = ["mirror/x"]\n')

    failed = await asyncio.to_thread(
        run_sync, "--data-dir", str(device), "--config", str(config)
    )

    assert failed.returncode == 1, failed.stdout + failed.stderr
    status = shown(root, tmp_path, "edge01")
    assert status["connectionState"] == "Unhealthy"
    [detail] = status["statusDetails"]
    assert detail["code"] == "UPSTREAM_UNREACHABLE"
    assert detail["type"] == "ConnectivityError"
    assert "127.0.0.1" in detail["description"]
    assert detail["timestamp"].endswith("Z") and detail["correlationId"]

    await asyncio.to_thread(sync_json, "--data-dir", str(device))  # without the bad upstream
    healed = shown(root, tmp_path, "edge01")
    assert healed["connectionState"] == "Online"
    assert healed["statusDetails"] == []


async def test_outside_the_window_nothing_moves_until_the_schedule_changes(
    root: Root, tmp_path: Path
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=3)).hour
    device = await activated_device(
        root, tmp_path, ["demo/app"], sync_schedule=f"0 {later} * * *", sync_window="PT1H"
    )
    async with aiohttp.ClientSession(headers=pusher(root)) as http:
        await push_image(http, root.server.url, "demo/app", make_image("app"), "v1")

    closed = await asyncio.to_thread(run_sync, "--data-dir", str(device))

    assert closed.returncode == 0, closed.stderr
    assert "Outside the sync window" in closed.stdout
    assert "The next window opens at " in closed.stdout
    assert f"{later:02d}:00 UTC." in closed.stdout
    assert not has_manifest(device, "demo/app", "v1")
    as_json = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert as_json["window"]["open"] is False
    assert as_json["requests"] == 1  # only the settings (304): nothing else leaves the device

    root.hierarchy.update("edge01", sync_schedule="* * * * *")
    opened = await asyncio.to_thread(sync_json, "--data-dir", str(device))
    assert opened["window"]["open"] is True
    assert has_manifest(device, "demo/app", "v1")


async def test_a_run_past_its_window_stops_between_repositories(
    root: Root, tmp_path: Path
) -> None:
    device = await activated_device(
        root, tmp_path, ["demo/a", "demo/b"], sync_schedule="0 0 * * *", sync_window="PT1H"
    )
    async with aiohttp.ClientSession(headers=pusher(root)) as http:
        await push_image(http, root.server.url, "demo/a", make_image("a"), "v1")
        await push_image(http, root.server.url, "demo/b", make_image("b"), "v1")
    inside, past = datetime(2024, 3, 10, 0, 30, tzinfo=UTC), datetime(2024, 3, 10, 1, 0, tzinfo=UTC)
    store = Store(device)
    config = load(None, device)
    try:
        # The clock passes the window's end as soon as demo/a has its tag: the run must stop
        # before demo/b and keep demo/a.
        def clock() -> datetime:
            return inside if store.manifest("demo/a", "v1") is None else past

        report = await sync_run.run_sync(store, config, clock=clock)

        assert report.stopped_by_window
        assert report.errors == []
        assert store.manifest("demo/a", "v1") is not None
        assert store.manifest("demo/b", "v1") is None
        assert store.node.changes_cursor is None  # not applied: the feed is read again
        assert store.node.last_sync_time is None

        again = await sync_run.run_sync(store, config, clock=lambda: inside)

        assert not again.stopped_by_window and again.errors == []
        assert store.manifest("demo/b", "v1") is not None
        assert store.node.changes_cursor is not None
    finally:
        store.close()
