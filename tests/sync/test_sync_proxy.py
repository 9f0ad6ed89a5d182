"""Sites reach their upstream through a proxy: `sync` honours HTTP(S)_PROXY and NO_PROXY, and a
proxy that corrupts what passes through is caught by the digests — nothing bad is stored. Every
outgoing call goes the same way (transport.py): the gateway and a root's management API too.

The proxy is a real forward proxy on loopback (absolute-form request targets, as clients send
them to an HTTP proxy), in the test process; the upstream is Debian's `docker-registry`."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from support.cli import clean_env
from support.hierarchy import activate, make_root
from support.oci import digest_of, make_image, push_image
from support.sync import DistributionRegistry

from appliance.oci.digests import Digest
from appliance.storage.store import Store

HOP_HEADERS = {"connection", "proxy-connection", "keep-alive", "transfer-encoding", "host"}


@dataclass
class ForwardProxy:
    corrupt_blobs: bool = False
    seen: list[str] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> ForwardProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _forward(self, request: web.Request) -> web.Response:
        # An HTTP proxy gets the whole URL as the request target.
        target = str(request.url) if request.url.is_absolute() else None
        if target is None or not target.startswith("http://"):
            return web.Response(status=400, text="not a proxy request")
        self.seen.append(f"{request.method} {request.url.path}")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                target,
                headers=headers,
                data=await request.read() or None,
                allow_redirects=False,
            ) as upstream,
        ):
            body = bytearray(await upstream.read())
            answer = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            answer.pop("Content-Length", None)
        if self.corrupt_blobs and "/blobs/" in request.url.path and upstream.status == 200:
            body[len(body) // 2] ^= 0x01  # same size: only the digest can tell
        return web.Response(status=upstream.status, headers=answer, body=bytes(body))


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[DistributionRegistry]:
    registry = DistributionRegistry(tmp_path / "distribution").start()
    yield registry
    registry.stop()


async def sync_through(config: Path, **env: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance",
        "sync",
        "--config",
        str(config),
        env={**clean_env(), **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


def node_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "node"}"\n[[upstream]]\nurl = "{url}"\n'
        'repositories = ["proxied/app"]\n'
    )
    return path


async def test_sync_goes_through_the_proxy_and_no_proxy_bypasses_it(
    upstream: DistributionRegistry, tmp_path: Path
) -> None:
    image = make_image("through-a-proxy", layers=2)
    async with aiohttp.ClientSession() as http:
        await push_image(http, upstream.url, "proxied/app", image, "v1")
    proxy = await ForwardProxy().start()
    try:
        config = node_config(tmp_path, upstream.url)
        code, stderr = await sync_through(config, HTTP_PROXY=proxy.url, NO_PROXY="")
        assert code == 0, stderr
        assert "GET /v2/proxied/app/tags/list" in proxy.seen
        assert sum(1 for s in proxy.seen if "/blobs/" in s) == len(image.blobs)
        store = Store(tmp_path / "node")
        try:
            stored = store.manifest("proxied/app", "v1")
            assert stored is not None and stored.content == image.manifest
        finally:
            store.close()

        proxy.seen.clear()
        code, stderr = await sync_through(config, HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
        assert code == 0, stderr
        assert proxy.seen == []
    finally:
        await proxy.stop()


async def test_a_corrupting_proxy_is_caught_and_nothing_bad_is_stored(
    upstream: DistributionRegistry, tmp_path: Path
) -> None:
    image = make_image("tampered-with", layers=2)
    async with aiohttp.ClientSession() as http:
        await push_image(http, upstream.url, "proxied/app", image, "v1")
    proxy = await ForwardProxy(corrupt_blobs=True).start()
    try:
        code, stderr = await sync_through(
            node_config(tmp_path, upstream.url), HTTP_PROXY=proxy.url, NO_PROXY=""
        )
    finally:
        await proxy.stop()

    assert code == 1
    assert stderr.startswith("Error: DIGEST_INVALID: proxied/app: "), stderr
    assert len(stderr.strip().splitlines()) == 1
    store = Store(tmp_path / "node")
    try:
        assert store.manifest("proxied/app", "v1") is None
        for blob in image.blobs:
            digest = Digest.parse(digest_of(blob))
            assert store.blob_size("proxied/app", digest) is None
            assert not store.blob_path(digest).exists()
        assert list(store.layout.uploads.iterdir()) == []
    finally:
        store.close()


async def test_a_device_reaches_its_parent_through_the_proxy_for_the_gateway_too(
    start_registry: Callable, tmp_path: Path
) -> None:
    root = make_root(start_registry, tmp_path / "root", ["--auth", "--insecure-http"])
    try:
        password = root.create("edge01", ["demo/*"], mode="ReadOnly")
        device = tmp_path / "device"
        activated = await asyncio.to_thread(activate, device, root.connection("edge01", password))
        assert activated.returncode == 0, activated.stderr
        proxy = await ForwardProxy().start()
        try:
            config = tmp_path / "device.toml"
            config.write_text(f'data_dir = "{device}"\n')
            code, stderr = await sync_through(config, HTTP_PROXY=proxy.url, NO_PROXY="")
        finally:
            await proxy.stop()
        assert code == 0, stderr
        # Settings, the change feed and the status report went through it, not around it.
        gateway = [s for s in proxy.seen if "/gateway/v1/registries/edge01/" in s]
        assert any(s.endswith("/settings") for s in gateway), proxy.seen
        assert any(s.endswith("/changes") for s in gateway), proxy.seen
        assert any(s.endswith("/status") for s in gateway), proxy.seen
    finally:
        root.store.close()


async def command_through(*args: str, **env: str) -> tuple[int, str, str]:
    """`connected-registry ARGS` in a child process with `env`: exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance",
        *args,
        env={**clean_env(), **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_cloud_commands_reach_a_remote_root_through_the_proxy(
    start_registry: Callable, tmp_path: Path
) -> None:
    data = tmp_path / "root"
    server = start_registry(data_dir=data, args=["--auth", "--insecure-http"])
    code, out, err = await command_through(
        "cloud", "init", "--login-server", server.host, "--data-dir", str(data), "--output", "json"
    )
    assert code == 0, err
    password = json.loads(out)["adminToken"]["passwords"][0]["value"]
    proxy = await ForwardProxy().start()
    try:
        code, out, err = await command_through(
            "cloud", "list", "--registry", server.url, "--password", password, "--output", "json",
            HTTP_PROXY=proxy.url, NO_PROXY="",
        )
    finally:
        await proxy.stop()
    assert code == 0, err
    assert json.loads(out) == []
    assert proxy.seen == ["GET /manage/v1/connected-registries"]
