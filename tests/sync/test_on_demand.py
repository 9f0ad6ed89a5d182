"""On-demand: a client pulls from a device content the device has not synced yet, and the device
fetches it from its parent in the same request. Real processes on loopback: a root served with
auth, a ReadOnly device activated against it and served on its data directory, clients with the
client token the root gave the device. Between device and root sits `ParentHop`, a real HTTP
hop in the test process (as a site's proxy or load balancer would be): it forwards every request
and records it, so the tests see what the device asked its parent; it can also corrupt what the
root sends, pace blob bodies, or go away.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from support import oci_layout
from support.hierarchy import Root, activate
from support.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Image,
    canonical,
    descriptor,
    digest_of,
    make_image,
    push_blob,
    push_image,
)
from support.server import RegistryProcess, free_port
from support.sync import SilentParent

from appliance.auth.scopes import PUSH, Permission
from appliance.oci.digests import Digest
from appliance.storage.layout import Layout
from appliance.storage.store import Store

PUSH_AND_LIST = PUSH | {"metadata/read"}
# Hop-by-hop or recomputed: not copied from one side of the hop to the other.
NOT_FORWARDED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
CHUNK = 256 * 1024


@dataclass
class Seen:
    method: str
    path: str
    status: int


@dataclass
class ParentHop:
    """An HTTP hop in front of the root: the device's parent endpoint is this."""

    upstream: str
    port: int = field(default_factory=free_port)
    seen: list[Seen] = field(default_factory=list)
    # Flip one byte in every manifest and blob body the root sends.
    corrupt: bool = False
    # Seconds to wait after each 256 KiB of a blob body: a slow link.
    pace: float = 0.0
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> ParentHop:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        self._runner = self._session = None

    def downloads(self, path: str) -> int:
        """Bodies of `path` the root actually sent (401s before a token do not count)."""
        return sum(1 for s in self.seen if s.method == "GET" and s.path == path and s.status == 200)

    def asked_for(self, prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(prefix)]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,  # Host included: the root's challenges name this hop
                data=await request.read() or None,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectionError:
            self.seen.append(Seen(request.method, request.path, 502))
            return web.Response(status=502)
        async with upstream:
            body = bytearray(await upstream.read())
            self.seen.append(Seen(request.method, request.path, upstream.status))
            content = "/manifests/" in request.path or "/blobs/" in request.path
            if self.corrupt and content and upstream.status == 200 and body:
                body[len(body) // 2] ^= 0x01
            response = web.StreamResponse(
                status=upstream.status,
                headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in NOT_FORWARDED
                },
            )
            response.content_length = (
                int(upstream.headers.get("Content-Length", 0))
                if request.method == "HEAD"
                else len(body)
            )
            await response.prepare(request)
            for start in range(0, len(body), CHUNK):
                await response.write(bytes(body[start : start + CHUNK]))
                if self.pace and "/blobs/" in request.path:
                    await asyncio.sleep(self.pace)
            await response.write_eof()
            return response


@dataclass
class Device:
    data: Path
    server: RegistryProcess
    client: dict[str, str]

    def url(self, path: str) -> str:
        return f"{self.server.url}/v2/{path}"


@pytest.fixture
async def hop(root: Root) -> AsyncIterator[ParentHop]:
    started = await ParentHop(root.server.url).start()
    yield started
    await started.stop()


@dataclass(frozen=True)
class Pusher:
    """A client token on the root that pushes to demo/*."""

    root: Root
    user: str
    password: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": aiohttp.encode_basic_auth(self.user, self.password)}

    async def image(self, repository: str, image: Image, tag: str) -> None:
        async with aiohttp.ClientSession(headers=self.headers) as http:
            await push_image(http, self.root.server.url, repository, image, tag)

    async def blob(self, repository: str, data: bytes) -> str:
        async with aiohttp.ClientSession(headers=self.headers) as http:
            return await push_blob(http, self.root.server.url, repository, data)


@pytest.fixture
def pusher(root: Root) -> Pusher:
    root.credentials.create_scope_map("demo-push", (Permission("demo/*", PUSH_AND_LIST),))
    _, passwords = root.credentials.create_token("pusher", "demo-push")
    return Pusher(root, "pusher", passwords["password1"])


async def served_device(
    root: Root,
    hop: ParentHop,
    tmp_path: Path,
    start_registry: Callable,
    repositories: list[str],
    mode: str = "ReadOnly",
    **settings: object,
) -> Device:
    """A device activated through the hop (its parent endpoint), served; the client token
    `client01` (demo/* pull on the root) is one the root gave it."""
    password = root.create(
        "edge01", repositories, mode=mode, client_tokens=["client01"], **settings
    )
    data = tmp_path / "device"
    connection = root.connection("edge01", password, port=hop.port)
    activated = await asyncio.to_thread(activate, data, connection)
    assert activated.returncode == 0, activated.stderr
    server = start_registry(data_dir=data, args=["--auth", "--insecure-http"])
    client = {"Authorization": aiohttp.encode_basic_auth("client01", root.client_password)}
    return Device(data, server, client)


def stored_tag(device: Path, repository: str, tag: str) -> tuple[str, str] | None:
    """(digest, origin) of the tag in the device's database."""
    store = Store(device)
    try:
        manifest = store.manifest(repository, tag)
        origin = store.tag_origin(repository, tag)
        return (manifest.digest, str(origin)) if manifest and origin else None
    finally:
        store.close()


def stored_blobs(device: Path, repository: str, blobs: list[bytes]) -> list[bool]:
    store = Store(device)
    try:
        return [
            store.blob_size(repository, Digest.parse(digest_of(blob))) == len(blob)
            for blob in blobs
        ]
    finally:
        store.close()


def repositories_on(device: Path) -> list[str]:
    store = Store(device)
    try:
        return store.repositories(None, None)[0]
    finally:
        store.close()


async def eventually(check: Callable[[], bool], what: str) -> None:
    """The background completion is not part of the request: poll for it, bounded (20 s)."""
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"not within 20 s: {what}")


async def fetch(
    http: aiohttp.ClientSession, url: str, method: str = "GET"
) -> tuple[int, bytes, dict[str, str]]:
    async with http.request(method, url, headers={"Accept": OCI_MANIFEST}) as response:
        return response.status, await response.read(), dict(response.headers)


def error_code(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


# -- a pull of what the device does not have -----------------------------------------------------


async def test_an_image_not_synced_yet_is_pulled_through_the_device_and_stored(
    root: Root,
    hop: ParentHop,
    pusher: Pusher,
    tmp_path: Path,
    start_registry: Callable,
) -> None:
    device = await served_device(root, hop, tmp_path, start_registry, ["demo/*"])
    image = make_image("not-synced-yet", layers=3)
    await pusher.image("demo/app", image, "v1")
    assert repositories_on(device.data) == []

    async with aiohttp.ClientSession(headers=device.client) as http:
        status, body, headers = await fetch(http, device.url("demo/app/manifests/v1"))
        assert status == 200, body
        assert body == image.manifest
        assert headers["Docker-Content-Digest"] == image.digest
        assert headers["Content-Type"].startswith(OCI_MANIFEST)
        for blob in image.blobs:
            status, body, _ = await fetch(http, device.url(f"demo/app/blobs/{digest_of(blob)}"))
            assert status == 200
            assert body == blob

    await eventually(
        lambda: stored_tag(device.data, "demo/app", "v1") == (image.digest, "parent"),
        "the device stores the manifest and its tag, from the parent",
    )
    assert all(stored_blobs(device.data, "demo/app", image.blobs))
    # The client's blob requests and the background completion shared each download.
    for blob in image.blobs:
        assert hop.downloads(f"/v2/demo/app/blobs/{digest_of(blob)}") == 1

    # Stored for good: served with the root gone, without asking the parent.
    root.server.stop()
    before = len(hop.asked_for("/v2/"))
    async with aiohttp.ClientSession(headers=device.client) as http:
        status, body, _ = await fetch(http, device.url("demo/app/manifests/v1"))
        assert (status, body) == (200, image.manifest)
        for blob in image.blobs:
            status, body, _ = await fetch(http, device.url(f"demo/app/blobs/{digest_of(blob)}"))
            assert (status, body) == (200, blob)
    assert len(hop.asked_for("/v2/")) == before


async def test_content_outside_the_scope_or_the_tag_filter_is_not_fetched(
    root: Root,
    hop: ParentHop,
    pusher: Pusher,
    tmp_path: Path,
    start_registry: Callable,
) -> None:
    device = await served_device(
        root, hop, tmp_path, start_registry, ["demo/app"], tag_include="^v"
    )
    other, latest = make_image("other-repository"), make_image("latest")
    await pusher.image("demo/other", other, "v1")
    await pusher.image("demo/app", latest, "latest")

    async with aiohttp.ClientSession(headers=device.client) as http:
        # client01 may read demo/*, but demo/other is not the device's to hold.
        status, body, _ = await fetch(http, device.url("demo/other/manifests/v1"))
        assert (status, error_code(body)) == (404, "MANIFEST_UNKNOWN")
        blob = digest_of(other.blobs[0])
        status, body, _ = await fetch(http, device.url(f"demo/other/blobs/{blob}"))
        assert (status, error_code(body)) == (404, "BLOB_UNKNOWN")
        # In scope, but the tag filter keeps `latest` off the device.
        status, body, _ = await fetch(http, device.url("demo/app/manifests/latest"))
        assert (status, error_code(body)) == (404, "MANIFEST_UNKNOWN")

    assert hop.asked_for("/v2/demo/") == []
    assert repositories_on(device.data) == []


async def test_concurrent_pulls_of_one_missing_blob_share_one_download(
    root: Root,
    hop: ParentHop,
    pusher: Pusher,
    tmp_path: Path,
    start_registry: Callable,
) -> None:
    device = await served_device(root, hop, tmp_path, start_registry, ["demo/*"])
    large = bytes(range(256)) * (16 * 1024)  # 4 MiB
    digest = await pusher.blob("demo/app", large)
    hop.pace = 0.05  # 16 chunks: the download takes a while, and the requests overlap it
    url = device.url(f"demo/app/blobs/{digest}")

    async with aiohttp.ClientSession(headers=device.client) as http:
        answers = await asyncio.gather(
            *(fetch(http, url) for _ in range(7)), fetch(http, url, "HEAD")
        )

    for status, body, headers in answers[:-1]:
        assert status == 200
        assert body == large
        assert headers["Docker-Content-Digest"] == digest
    head_status, _, head_headers = answers[-1]
    assert head_status == 200
    assert int(head_headers["Content-Length"]) == len(large)
    assert hop.downloads(f"/v2/demo/app/blobs/{digest}") == 1
    assert stored_blobs(device.data, "demo/app", [large]) == [True]


async def test_a_blob_check_on_a_read_write_device_is_not_a_download(
    root: Root,
    hop: ParentHop,
    pusher: Pusher,
    tmp_path: Path,
    start_registry: Callable,
) -> None:
    device = await served_device(root, hop, tmp_path, start_registry, ["demo/*"], "ReadWrite")
    base = b"a base layer the root has" * 1000
    digest = await pusher.blob("demo/app", base)
    url = device.url(f"demo/app/blobs/{digest}")

    async with aiohttp.ClientSession(headers=device.client) as http:
        # What a client pushing an image built on that layer asks first: it has the bytes.
        assert (await fetch(http, url, "HEAD"))[0] == 404
        assert hop.asked_for("/v2/demo/") == []
        # A pull of the same blob is fetched.
        status, body, _ = await fetch(http, url)
        assert (status, body) == (200, base)
    assert hop.downloads(f"/v2/demo/app/blobs/{digest}") == 1


async def test_a_device_stopped_while_completing_an_image_exits_cleanly_and_resumes_later(
    root: Root,
    hop: ParentHop,
    pusher: Pusher,
    tmp_path: Path,
    start_registry: Callable,
) -> None:
    device = await served_device(root, hop, tmp_path, start_registry, ["demo/*"])
    large = bytes(range(256)) * (16 * 1024)  # 4 MiB
    config = canonical({"architecture": "amd64", "os": "linux", "seed": "large"})
    manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, large)],
        }
    )
    image = Image(manifest, OCI_MANIFEST, [config, large])
    await pusher.image("demo/app", image, "v1")
    hop.pace = 1.0  # 16 s for the layer: still under way when the device is stopped
    layer = f"/v2/demo/app/blobs/{digest_of(large)}"

    async with aiohttp.ClientSession(headers=device.client) as http:
        status, body, _ = await fetch(http, device.url("demo/app/manifests/v1"))
        assert (status, body) == (200, image.manifest)
    await eventually(
        lambda: any(s.path == layer for s in hop.seen), "the background download starts"
    )

    device.server.stop()

    assert device.server.proc is not None
    assert device.server.proc.returncode == 0, device.server.log()
    assert stored_tag(device.data, "demo/app", "v1") is None
    assert stored_blobs(device.data, "demo/app", [large]) == [False]
    layout = Layout(device.data)
    assert not layout.blob(Digest.parse(digest_of(large))).exists()
    # What arrived stays only as a resumable partial of that digest, never as a blob.
    with sqlite3.connect(layout.database) as db:
        partials = dict(db.execute("SELECT id, digest FROM uploads").fetchall())
    assert set(partials.values()) <= {digest_of(large)}
    assert {path.name for path in layout.uploads.iterdir()} <= set(partials)

    # Started again, a pull of the layer completes it (from the partial) and leaves nothing.
    hop.pace = 0.0
    device.server.start()
    async with aiohttp.ClientSession(headers=device.client) as http:
        status, body, _ = await fetch(http, device.url(f"demo/app/blobs/{digest_of(large)}"))
        assert (status, body) == (200, large)
    assert list(layout.uploads.iterdir()) == []


# -- when nothing is fetched ---------------------------------------------------------------------


async def test_outside_the_sync_window_nothing_is_fetched(
    root: Root,
    hop: ParentHop,
    pusher: Pusher,
    tmp_path: Path,
    start_registry: Callable,
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=3)).hour
    device = await served_device(
        root,
        hop,
        tmp_path,
        start_registry,
        ["demo/*"],
        sync_schedule=f"0 {later} * * *",
        sync_window="PT1H",
    )
    image = make_image("after-hours")
    await pusher.image("demo/app", image, "v1")

    async with aiohttp.ClientSession(headers=device.client) as http:
        status, body, _ = await fetch(http, device.url("demo/app/manifests/v1"))
        assert (status, error_code(body)) == (404, "MANIFEST_UNKNOWN")
        blob = digest_of(image.blobs[0])
        status, body, _ = await fetch(http, device.url(f"demo/app/blobs/{blob}"))
        assert (status, error_code(body)) == (404, "BLOB_UNKNOWN")

    assert hop.asked_for("/v2/demo/") == []
    assert repositories_on(device.data) == []


async def test_an_unreachable_parent_gets_404_at_once_and_is_not_asked_again_for_a_while(
    root: Root,
    hop: ParentHop,
    pusher: Pusher,
    tmp_path: Path,
    start_registry: Callable,
) -> None:
    device = await served_device(root, hop, tmp_path, start_registry, ["demo/*"])
    here, missing = make_image("here"), make_image("missing")
    await pusher.image("demo/app", here, "v1")
    await pusher.image("demo/app", missing, "v2")
    async with aiohttp.ClientSession(headers=device.client) as http:
        assert (await fetch(http, device.url("demo/app/manifests/v1")))[0] == 200
    await eventually(
        lambda: stored_tag(device.data, "demo/app", "v1") is not None, "v1 stored on the device"
    )

    await hop.stop()  # the parent's address refuses connections
    async with aiohttp.ClientSession(headers=device.client) as http:
        status, body, _ = await fetch(http, device.url("demo/app/manifests/v2"))
        assert (status, error_code(body)) == (404, "MANIFEST_UNKNOWN")

        # The parent is back at once, but the device does not try it again so soon: a client
        # of a cut-off device is answered from what the device has, without waiting.
        await hop.start()
        hop.seen.clear()
        status, _, _ = await fetch(http, device.url("demo/app/manifests/v2"))
        assert status == 404
        blob = digest_of(missing.blobs[0])
        assert (await fetch(http, device.url(f"demo/app/blobs/{blob}")))[0] == 404
        status, body, _ = await fetch(http, device.url("demo/app/manifests/v1"))
        assert (status, body) == (200, here.manifest)
    assert hop.seen == []


async def test_a_parent_that_accepts_and_never_answers_gets_404_within_seconds(
    root: Root,
    hop: ParentHop,
    tmp_path: Path,
    start_registry: Callable,
) -> None:
    device = await served_device(root, hop, tmp_path, start_registry, ["demo/*"])
    await hop.stop()
    silent = await SilentParent(hop.port).start()
    try:
        async with aiohttp.ClientSession(headers=device.client) as http:
            # Well under the 30 s a body may stall: the wait for the first byte is bounded.
            status, body, _ = await asyncio.wait_for(
                fetch(http, device.url("demo/app/manifests/v1")), 15
            )
            assert (status, error_code(body)) == (404, "MANIFEST_UNKNOWN")
            assert silent.connections == 1
            # The breaker is open: the next miss is answered without asking.
            status, body, _ = await fetch(http, device.url(f"demo/app/blobs/{digest_of(b'x')}"))
            assert (status, error_code(body)) == (404, "BLOB_UNKNOWN")
            assert silent.connections == 1
    finally:
        await silent.stop()


async def test_a_slow_but_moving_blob_is_not_cut_by_the_first_byte_bound(
    root: Root,
    hop: ParentHop,
    pusher: Pusher,
    tmp_path: Path,
    start_registry: Callable,
) -> None:
    device = await served_device(root, hop, tmp_path, start_registry, ["demo/*"])
    large = bytes(range(256)) * (16 * 1024)  # 4 MiB: 16 chunks through the hop
    digest = await pusher.blob("demo/app", large)
    hop.pace = 0.3  # about 5 s for the body, longer than the wait for its first byte

    async with aiohttp.ClientSession(headers=device.client) as http:
        status, body, _ = await fetch(http, device.url(f"demo/app/blobs/{digest}"))

    assert (status, body) == (200, large)
    assert hop.downloads(f"/v2/demo/app/blobs/{digest}") == 1


async def test_content_the_parent_corrupts_is_refused_and_nothing_is_stored(
    root: Root,
    hop: ParentHop,
    pusher: Pusher,
    tmp_path: Path,
    start_registry: Callable,
) -> None:
    device = await served_device(root, hop, tmp_path, start_registry, ["demo/*"])
    image = make_image("tampered", layers=1)
    await pusher.image("demo/app", image, "v1")
    layer = digest_of(image.blobs[1])
    hop.corrupt = True

    async with aiohttp.ClientSession(headers=device.client) as http:
        status, body, _ = await fetch(http, device.url(f"demo/app/blobs/{layer}"))
        assert (status, error_code(body)) == (502, "BLOB_UNKNOWN")
        assert "nothing was stored" in json.loads(body)["errors"][0]["message"]
        status, body, _ = await fetch(http, device.url("demo/app/manifests/v1"))
        assert (status, error_code(body)) == (502, "MANIFEST_UNKNOWN")

    assert repositories_on(device.data) == []
    layout = Layout(device.data)
    assert not layout.blob(Digest.parse(layer)).exists()
    assert list(layout.uploads.iterdir()) == []

    # The fault was the content's, not the parent's reachability: once the bytes are right
    # again, the same pull works at once.
    hop.corrupt = False
    async with aiohttp.ClientSession(headers=device.client) as http:
        status, body, _ = await fetch(http, device.url(f"demo/app/blobs/{layer}"))
        assert (status, body) == (200, image.blobs[1])
        status, body, _ = await fetch(http, device.url("demo/app/manifests/v1"))
        assert (status, body) == (200, image.manifest)


# -- a real client ------------------------------------------------------------------------------


async def skopeo(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "skopeo",
        "--insecure-policy",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 180)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"skopeo {' '.join(args)} did not finish within 180 s")
    assert proc.returncode == 0, stderr.decode(errors="replace")


async def test_skopeo_copies_a_multi_arch_image_the_device_has_not_synced(
    root: Root,
    hop: ParentHop,
    pusher: Pusher,
    tmp_path: Path,
    start_registry: Callable,
) -> None:
    device = await served_device(root, hop, tmp_path, start_registry, ["demo/*"])
    source = oci_layout.Layout(tmp_path / "in")
    index = source.add_index("multi", [("linux", "amd64"), ("linux", "arm64")])
    source.tag(index, "v1")
    await skopeo(
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"{pusher.user}:{pusher.password}",
        f"oci:{source.path}:v1",
        f"docker://{root.server.host}/demo/multi:v1",
    )

    out = tmp_path / "out"
    await skopeo(
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--src-creds",
        f"client01:{root.client_password}",
        f"docker://{device.server.host}/demo/multi:v1",
        f"oci:{out}:v1",
    )

    assert oci_layout.tagged_digest(out, "v1") == index["digest"]
    sent = oci_layout.closure(source.path, index["digest"])
    received = oci_layout.closure(out, index["digest"])
    assert received == sent
    await eventually(
        lambda: stored_tag(device.data, "demo/multi", "v1") == (index["digest"], "parent"),
        "the device stores the index, its images and the tag",
    )
