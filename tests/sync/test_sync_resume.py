"""A blob download interrupted in one sync run continues in the next from the bytes already on
the device, with HTTP `Range`: after the parent died mid-blob, after the sync process itself was
killed, after the sync window closed mid-blob. An upstream that ignores `Range` gets the blob
fetched again from zero. Real processes on loopback (a root served with auth, an activated
device, `sync` in a child process); the assertions are on what moved over the link in each run
(`bytes`, `bytesResumed` of the report), not only on the result."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from support.cli import clean_env
from support.hierarchy import Root, activate
from support.oci import Image, digest_of, push_image, random_image
from support.sync import DistributionRegistry, run_sync, sync_json

from appliance.auth.scopes import PUSH, Permission
from appliance.cli.options import load
from appliance.oci.digests import Digest
from appliance.storage.layout import Layout
from appliance.storage.store import Store
from appliance.sync import run as sync_run

MiB = 1024 * 1024
BIG = 256 * MiB
PUSH_AND_LIST = PUSH | {"metadata/read"}


async def device_with_image(root: Root, tmp_path: Path, image: Image, **settings: object) -> Path:
    """An activated ReadOnly device in scope of demo/big, and `image` pushed to the root."""
    password = root.create(
        "edge01", ["demo/big"], mode="ReadOnly", client_tokens=["client01"], **settings
    )
    device = tmp_path / "device"
    activated = await asyncio.to_thread(activate, device, root.connection("edge01", password))
    assert activated.returncode == 0, activated.stderr
    root.credentials.create_scope_map("demo-push", (Permission("demo/*", PUSH_AND_LIST),))
    _, passwords = root.credentials.create_token("pusher", "demo-push")
    auth = {"Authorization": aiohttp.encode_basic_auth("pusher", passwords["password1"])}
    async with aiohttp.ClientSession(headers=auth) as http:
        await push_image(http, root.server.url, "demo/big", image, "v1")
    return device


def limited(tmp_path: Path, data_dir: Path, limit: int) -> Path:
    """A config file for `data_dir` with `[sync] bandwidth_limit`, so a kill lands mid-blob."""
    path = tmp_path / "limited.toml"
    path.write_text(f'data_dir = "{data_dir}"\n[sync]\nbandwidth_limit = {limit}\n')
    return path


def partials(data_dir: Path) -> list[int]:
    """Sizes of the upload files on disk: the partial downloads (one finished while we look,
    and so moved into the blob store, is not one)."""
    sizes = []
    for entry in Layout(data_dir).uploads.iterdir():
        with contextlib.suppress(FileNotFoundError):
            sizes.append(entry.stat().st_size)
    return sizes


def stored_bytes(data_dir: Path, repository: str, image: Image) -> int:
    """Bytes of `image`'s blobs the device holds."""
    store = Store(data_dir)
    try:
        return sum(
            len(blob)
            for blob in image.blobs
            if store.blob_size(repository, Digest.parse(digest_of(blob))) is not None
        )
    finally:
        store.close()


def error_line(stderr: str) -> str:
    """The command's error: its last line (progress lines may come before it)."""
    return stderr.strip().splitlines()[-1]


def start_sync(*args: str) -> subprocess.Popen[str]:
    """`connected-registry sync ARGS --output json` in a child process, left running."""
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "sync", *args, "--output", "json"],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def until_downloaded(data_dir: Path, at_least: int, sync: subprocess.Popen[str]) -> None:
    """Wait (bounded) until the running sync has `at_least` bytes of a partial on disk."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert sync.poll() is None, f"the sync ended early: {sync.communicate()}"
        if max(partials(data_dir), default=0) >= at_least:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {at_least} bytes downloaded within 60 s")


async def served_digest(url: str, password: str, repository: str, digest: str) -> str:
    """The digest of the bytes client01 gets pulling `digest` from the device, streamed."""
    client = {"Authorization": aiohttp.encode_basic_auth("client01", password)}
    hasher = hashlib.sha256()
    async with (
        aiohttp.ClientSession(headers=client) as http,
        http.get(f"{url}/v2/{repository}/blobs/{digest}") as response,
    ):
        assert response.status == 200, response.status
        async for chunk in response.content.iter_chunked(MiB):
            hasher.update(chunk)
    return f"sha256:{hasher.hexdigest()}"


@pytest.mark.slow
async def test_a_blob_cut_off_by_the_parent_dying_resumes_from_the_device_at_the_next_run(
    root: Root, tmp_path: Path, start_registry: Callable
) -> None:
    image = random_image(256, [BIG])
    layer = digest_of(image.blobs[1])
    device = await device_with_image(root, tmp_path, image)
    sync = start_sync("--config", str(limited(tmp_path, device, 64 * MiB)))

    await until_downloaded(device, 64 * MiB, sync)
    root.server.kill()
    stdout, stderr = await asyncio.to_thread(sync.communicate, timeout=120)

    assert sync.returncode == 1
    assert error_line(stderr).startswith("Error: PARENT_UNREACHABLE: "), stderr
    [partial] = partials(device)
    assert 64 * MiB <= partial < BIG
    first = json.loads(stdout)
    # What arrived in the first run is on disk: stored blobs and the partial.
    assert first["total"]["bytes"] == partial + stored_bytes(device, "demo/big", image)
    assert first["total"]["manifests"] == 0

    root.server.start()  # same data, same port
    missing = sum(len(blob) for blob in image.blobs) - stored_bytes(device, "demo/big", image)
    second = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    assert second["sources"][0]["errors"] == []
    assert second["total"]["manifests"] == 1
    assert second["total"]["bytesResumed"] == partial
    assert second["total"]["bytes"] == missing - partial
    assert second["total"]["bytes"] <= BIG - 64 * MiB
    assert partials(device) == []
    served = start_registry(data_dir=device, args=["--auth", "--insecure-http"])
    assert await served_digest(served.url, root.client_password, "demo/big", layer) == layer


@pytest.mark.slow
async def test_a_sync_killed_mid_blob_resumes_from_what_reached_the_disk(
    root: Root, tmp_path: Path
) -> None:
    image = random_image(257, [BIG])
    device = await device_with_image(root, tmp_path, image)
    sync = start_sync("--config", str(limited(tmp_path, device, 64 * MiB)))

    await until_downloaded(device, 64 * MiB, sync)
    sync.send_signal(signal.SIGKILL)  # a power cut, an OOM kill: no cleanup runs
    await asyncio.to_thread(sync.wait, 10)

    [partial] = partials(device)  # the upload file is the truth about progress
    assert 64 * MiB <= partial < BIG
    missing = sum(len(blob) for blob in image.blobs) - stored_bytes(device, "demo/big", image)

    second = await asyncio.to_thread(sync_json, "--data-dir", str(device))

    assert second["sources"][0]["errors"] == []
    assert second["total"]["manifests"] == 1
    assert second["total"]["bytesResumed"] == partial
    assert second["total"]["bytes"] == missing - partial
    assert partials(device) == []
    store = Store(device)
    try:
        stored = store.manifest("demo/big", "v1")
        assert stored is not None and stored.digest == image.digest
        layer = Digest.parse(digest_of(image.blobs[1]))
        assert _file_digest(store.blob_path(layer)) == str(layer)
    finally:
        store.close()


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(4 * MiB):
            hasher.update(piece)
    return f"sha256:{hasher.hexdigest()}"


async def test_a_window_closing_mid_blob_stops_it_and_the_next_window_resumes_it(
    root: Root, tmp_path: Path
) -> None:
    image = random_image(32, [32 * MiB])
    device = await device_with_image(
        root, tmp_path, image, sync_schedule="0 0 * * *", sync_window="PT1H"
    )
    inside, past = datetime(2024, 3, 10, 0, 30, tzinfo=UTC), datetime(2024, 3, 10, 1, 0, tzinfo=UTC)
    store = Store(device)
    config = load(None, device)
    try:
        # The window ends once 8 MiB of the layer are on the device: mid-blob.
        def clock() -> datetime:
            return inside if max(partials(device), default=0) < 8 * MiB else past

        report = await sync_run.run_sync(store, config, clock=clock)

        assert report.stopped_by_window
        assert report.errors == []
        assert store.manifest("demo/big", "v1") is None
        [partial] = partials(device)
        assert 8 * MiB <= partial < 32 * MiB
        assert report.total.bytes == partial + stored_bytes(device, "demo/big", image)
        missing = sum(len(blob) for blob in image.blobs) - stored_bytes(device, "demo/big", image)

        again = await sync_run.run_sync(store, config, clock=lambda: inside)

        assert not again.stopped_by_window and again.errors == []
        assert again.total.resumed_bytes == partial
        assert again.total.bytes == missing - partial
        stored = store.manifest("demo/big", "v1")
        assert stored is not None and stored.digest == image.digest
        layer = Digest.parse(digest_of(image.blobs[1]))
        assert store.blob_path(layer).read_bytes() == image.blobs[1]
        assert partials(device) == []
    finally:
        store.close()


# -- an upstream that ignores Range -----------------------------------------------------------


@dataclass
class Proxy:
    """A reverse proxy in front of a plain registry, on loopback: it cuts a blob's body after
    `cut` bytes and then answers 503 to everything (a link gone down), or, with `strip_range`,
    drops the `Range` header so the registry sends whole blobs."""

    upstream: str
    cut: int | None = None
    strip_range: bool = False
    down: bool = False
    blob_ranges: list[str | None] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.forward)
        return app

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            return web.Response(status=503)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        is_blob = "/blobs/sha256:" in request.path
        if is_blob:
            self.blob_ranges.append(request.headers.get("Range"))
        if self.strip_range:
            headers.pop("Range", None)
        async with (
            aiohttp.ClientSession(auto_decompress=False) as http,
            http.request(
                request.method, f"{self.upstream}{request.path_qs}", headers=headers
            ) as answer,
        ):
            copied = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            if not is_blob or request.method != "GET":
                copied.pop("Content-Length", None)
                return web.Response(status=answer.status, body=await answer.read(), headers=copied)
            response = web.StreamResponse(status=answer.status, headers=copied)
            await response.prepare(request)
            sent = 0
            async for chunk in answer.content.iter_chunked(256 * 1024):
                if self.cut is not None and sent + len(chunk) > self.cut:
                    await response.write(chunk[: self.cut - sent])
                    self.down = True
                    # The body stops short of its Content-Length: the client sees a lost link.
                    raise ConnectionResetError("the link went down")
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
            return response


HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "date", "server"}


def mirror(tmp_path: Path, upstream_url: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "node"}"\n'
        f'[[upstream]]\nurl = "{upstream_url}"\nrepositories = ["mirror/app"]\n'
    )
    return path


async def test_an_upstream_that_ignores_range_gets_the_blob_fetched_again_from_zero(
    tmp_path: Path, aiohttp_server: Callable
) -> None:
    registry = DistributionRegistry(tmp_path / "distribution").start()
    try:
        image = random_image(16, [16 * MiB])
        async with aiohttp.ClientSession() as http:
            await push_image(http, registry.url, "mirror/app", image, "v1")
        proxy = Proxy(registry.url, cut=4 * MiB)
        server = await aiohttp_server(proxy.app())
        config = mirror(tmp_path, f"http://127.0.0.1:{server.port}")
        node = tmp_path / "node"

        cut_off = await asyncio.to_thread(run_sync, "--config", str(config))

        assert cut_off.returncode == 1
        assert error_line(cut_off.stderr).startswith("Error: UPSTREAM_UNREACHABLE: "), (
            cut_off.stderr
        )
        [partial] = partials(node)
        assert 0 < partial <= 4 * MiB

        missing = sum(len(blob) for blob in image.blobs) - stored_bytes(node, "mirror/app", image)
        proxy.cut, proxy.down, proxy.strip_range = None, False, True
        proxy.blob_ranges.clear()
        again = json.loads(
            (await asyncio.to_thread(run_sync, "--config", str(config), "--output", "json")).stdout
        )

        assert again["sources"][0]["errors"] == []
        assert again["total"]["manifests"] == 1
        # Asked from where it stopped, got the whole blob, threw the partial away, took it all.
        assert f"bytes={partial}-" in proxy.blob_ranges
        assert again["total"]["bytesResumed"] == 0
        assert again["total"]["bytes"] == missing
        layer = image.blobs[1]
        assert partials(node) == []
        store = Store(node)
        try:
            assert store.manifest("mirror/app", "v1") is not None
            assert store.blob_path(Digest.parse(digest_of(layer))).read_bytes() == layer
        finally:
            store.close()
    finally:
        registry.stop()
