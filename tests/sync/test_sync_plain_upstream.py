"""A development node mirrors repositories from a plain upstream: Debian's `docker-registry`
(CNCF distribution 2.8) with htpasswd Basic auth, configured as `[[upstream]]`.

Content is pushed to distribution over its API; `connected-registry sync` runs as the timer
would run it; what the node then serves (its own `serve` process) must be byte-identical.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from support.cli import clean_env
from support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    canonical,
    descriptor,
    digest_of,
    make_image,
    push_image,
    push_manifest,
)
from support.sync import DistributionRegistry, get, run_sync, sync_json

from appliance.cli.options import load
from appliance.oci.digests import Digest
from appliance.storage.layout import Layout
from appliance.storage.store import Store
from appliance.sync.lock import sync_lock
from appliance.sync.run import run_sync as run_sync_in_process

USER, PASSWORD = "mirror", "s3cret-pw"
SIGNATURE = "application/vnd.example.signature"
AUTH = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[DistributionRegistry]:
    registry = DistributionRegistry(tmp_path / "distribution", USER, PASSWORD).start()
    yield registry
    registry.stop()


def node_config(tmp_path: Path, upstream_url: str, repositories: list[str], **extra: str) -> Path:
    (tmp_path / "credentials").write_text(f"{USER}:{PASSWORD}\n")
    lines = [
        f'data_dir = "{tmp_path / "node"}"',
        "[[upstream]]",
        f'url = "{upstream_url}"',
        f"repositories = {json.dumps(repositories)}",
        'credentials_file = "credentials"',  # relative: to the config file
        *(f'{key} = "{value}"' for key, value in extra.items()),
    ]
    path = tmp_path / "node.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def push_everything(base: str) -> dict[str, Image | bytes]:
    """An image, a two-platform index and a signature of the image (pushed by digest, listed
    under the OCI referrers fallback tag, as clients do for registries without the API)."""
    async with aiohttp.ClientSession(headers=AUTH) as http:
        image = make_image("app-v1", layers=3)
        await push_image(http, base, "mirror/app", image, "v1")
        old = make_image("app-old", layers=1)
        await push_image(http, base, "mirror/app", old, "old")
        amd64, arm64 = make_image("amd64"), make_image("arm64")
        for platform in (amd64, arm64):
            await push_image(http, base, "mirror/multi", platform)
        index = canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    descriptor(
                        OCI_MANIFEST,
                        amd64.manifest,
                        platform={"os": "linux", "architecture": "amd64"},
                    ),
                    descriptor(
                        OCI_MANIFEST,
                        arm64.manifest,
                        platform={"os": "linux", "architecture": "arm64"},
                    ),
                ],
            }
        )
        response = await push_manifest(http, base, "mirror/multi", "latest", index, OCI_INDEX)
        assert response.status == 201
        signature = make_image(
            "signature",
            layers=1,
            subject=descriptor(OCI_MANIFEST, image.manifest),
            artifact_type=SIGNATURE,
        )
        await push_image(http, base, "mirror/app", signature)
        fallback = canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [descriptor(OCI_MANIFEST, signature.manifest, artifactType=SIGNATURE)],
            }
        )
        fallback_tag = "sha256-" + image.digest.split(":")[1]
        response = await push_manifest(http, base, "mirror/app", fallback_tag, fallback, OCI_INDEX)
        assert response.status == 201
    return {
        "image": image,
        "old": old,
        "amd64": amd64,
        "arm64": arm64,
        "index": index,
        "signature": signature,
    }


async def test_a_plain_upstream_is_mirrored_byte_exact(
    upstream: DistributionRegistry, tmp_path: Path, start_registry: Callable
) -> None:
    pushed = await push_everything(upstream.url)
    config = node_config(tmp_path, upstream.url, ["mirror/app", "mirror/multi"])

    dry = await asyncio.to_thread(sync_json, "--config", str(config), "--dry-run")
    assert dry["dryRun"] is True
    assert dry["total"]["manifests"] == 7  # v1, old, signature, fallback index, 2 + index
    store = Store(tmp_path / "node")
    assert store.repositories(None, None) == ([], False)  # a dry run writes nothing
    store.close()

    first = await asyncio.to_thread(sync_json, "--config", str(config))
    total = first["total"]
    assert (total["repositories"], total["manifests"]) == (2, 7)
    images: list[Image] = [pushed[k] for k in ("image", "old", "amd64", "arm64", "signature")]  # type: ignore[misc]
    blobs = {digest_of(b): len(b) for i in images for b in i.blobs}
    assert total["blobs"] == len(blobs)
    assert total["bytes"] == sum(blobs.values())
    assert first["sources"][0]["errors"] == []

    node = start_registry(data_dir=tmp_path / "node")
    image, index, signature = pushed["image"], pushed["index"], pushed["signature"]
    assert isinstance(image, Image) and isinstance(signature, Image) and isinstance(index, bytes)
    async with aiohttp.ClientSession() as http:
        body, headers = await get(http, f"{node.url}/v2/mirror/app/manifests/v1", OCI_MANIFEST)
        assert body == image.manifest
        assert headers["Docker-Content-Digest"] == image.digest
        body, headers = await get(http, f"{node.url}/v2/mirror/multi/manifests/latest", OCI_INDEX)
        assert body == index
        assert headers["Docker-Content-Digest"] == digest_of(index)
        for blob in image.blobs:
            body, _ = await get(http, f"{node.url}/v2/mirror/app/blobs/{digest_of(blob)}")
            assert body == blob
        for platform in ("amd64", "arm64"):
            child = pushed[platform]
            assert isinstance(child, Image)
            body, _ = await get(http, f"{node.url}/v2/mirror/multi/manifests/{child.digest}")
            assert body == child.manifest
        body, _ = await get(http, f"{node.url}/v2/mirror/app/referrers/{image.digest}")
        referrers = json.loads(body)["manifests"]
        assert [r["digest"] for r in referrers] == [signature.digest]
        assert referrers[0]["artifactType"] == SIGNATURE

    # Nothing changed upstream: nothing moves, and it costs one tags list and one HEAD per tag.
    second = await asyncio.to_thread(sync_json, "--config", str(config))
    assert second["total"]["manifests"] == second["total"]["blobs"] == 0
    assert second["total"]["bytes"] == second["total"]["tagsMoved"] == 0
    tags = 3 + 1  # mirror/app: v1, old, the fallback tag; mirror/multi: latest
    auth_round_trips = 2  # the first anonymous request of the run is answered 401
    assert second["requests"] <= 2 + tags + auth_round_trips

    # A manifest deleted upstream takes its tag with it on the next run, and goes itself.
    old = pushed["old"]
    assert isinstance(old, Image)
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.delete(f"{upstream.url}/v2/mirror/app/manifests/{old.digest}") as response,
    ):
        assert response.status == 202
    third = await asyncio.to_thread(sync_json, "--config", str(config))
    assert third["total"]["tagsDeleted"] == 1
    assert third["total"]["manifestsDeleted"] == 1
    async with aiohttp.ClientSession() as http:
        for reference in ("old", old.digest):
            async with http.get(f"{node.url}/v2/mirror/app/manifests/{reference}") as response:
                assert response.status == 404
        # The image that stays keeps its manifest and signature.
        body, _ = await get(http, f"{node.url}/v2/mirror/app/manifests/{image.digest}")
        assert body == image.manifest
        body, _ = await get(http, f"{node.url}/v2/mirror/app/manifests/{signature.digest}")
        assert body == signature.manifest
    async with aiohttp.ClientSession() as http:
        body, _ = await get(http, f"{node.url}/v2/mirror/app/tags/list")
        assert "old" not in json.loads(body)["tags"]
        assert "v1" in json.loads(body)["tags"]


async def test_patterns_resolve_through_the_catalog_and_tag_filters_apply(
    upstream: DistributionRegistry, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for tag in ("1.0", "1.1", "dev"):
            await push_image(http, upstream.url, "team/one", make_image(f"one-{tag}", 1), tag)
        await push_image(http, upstream.url, "other/two", make_image("two", 1), "1.0")
    config = node_config(tmp_path, upstream.url, ["team/*"], tag_exclude="^dev$")

    report = await asyncio.to_thread(sync_json, "--config", str(config))

    assert report["total"]["tagsMoved"] == 2
    store = Store(tmp_path / "node")
    try:
        assert store.repositories(None, None)[0] == ["team/one"]
        assert store.tags("team/one", None, None)[0] == ["1.0", "1.1"]
    finally:
        store.close()


async def test_an_upstream_with_a_semver_range_mirrors_only_the_versions_in_it(
    upstream: DistributionRegistry, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for tag in ("1.1.9", "v1.2.0", "1.4.0-beta.1", "1.4.0", "2.0.0", "1.4", "latest"):
            await push_image(http, upstream.url, "mirror/app", make_image(f"app-{tag}", 1), tag)
    config = node_config(tmp_path, upstream.url, ["mirror/app"], tag_semver=">=1.2 <2")

    await asyncio.to_thread(sync_json, "--config", str(config))

    store = Store(tmp_path / "node")
    try:
        assert store.tags("mirror/app", None, None)[0] == ["1.4.0", "v1.2.0"]
    finally:
        store.close()


def test_a_second_run_while_one_holds_the_lock_does_nothing(
    upstream: DistributionRegistry, tmp_path: Path
) -> None:
    config = node_config(tmp_path, upstream.url, ["mirror/app"])
    (tmp_path / "node").mkdir()
    with sync_lock(tmp_path / "node" / "sync.lock"):
        result = run_sync("--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "a sync is already running" in result.stdout


def test_wrong_credentials_fail_in_one_line(upstream: DistributionRegistry, tmp_path: Path) -> None:
    config = node_config(tmp_path, upstream.url, ["mirror/app"])
    (tmp_path / "credentials").write_text(f"{USER}:wrong\n")

    result = run_sync("--config", str(config))

    assert result.returncode == 1
    assert result.stderr.strip().startswith("Error: UNAUTHORIZED: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_upstream_fails_in_one_line(tmp_path: Path) -> None:
    stopped = DistributionRegistry(tmp_path / "gone")  # never started: nothing listens
    config = node_config(tmp_path, stopped.url, ["mirror/app"])

    result = run_sync("--config", str(config))

    assert result.returncode == 1
    assert result.stderr.startswith("Error: UPSTREAM_UNREACHABLE: cannot reach 127.0.0.1:")


# --- an upstream that lies ---------------------------------------------------------------------


def lying_upstream(image: Image, bad: bytes) -> web.Application:
    """Serves `image` as tag v1, except that its last layer's bytes are `bad`."""
    app = web.Application()
    blobs = {digest_of(b): b for b in image.blobs}
    blobs[digest_of(image.blobs[-1])] = bad

    async def base(request: web.Request) -> web.Response:
        return web.json_response({})

    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"name": request.match_info["name"], "tags": ["v1"]})

    async def manifest(request: web.Request) -> web.Response:
        headers = {"Docker-Content-Digest": image.digest, "Content-Type": image.media_type}
        return web.Response(body=image.manifest, headers=headers)

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=blobs[request.match_info["digest"]])

    app.router.add_get("/v2/", base)
    app.router.add_get("/v2/{name:.+}/tags/list", tags)
    app.router.add_route("*", "/v2/{name:.+}/manifests/{ref}", manifest)
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", blob)
    return app


async def test_an_upstream_that_sends_wrong_bytes_is_refused_and_nothing_is_stored(
    tmp_path: Path, aiohttp_server: Callable
) -> None:
    image = make_image("honest", layers=2)
    bad = bytearray(image.blobs[-1])
    bad[10] ^= 0xFF  # same size, different bytes: only the digest can tell
    server = await aiohttp_server(lying_upstream(image, bytes(bad)))
    config = node_config(tmp_path, f"http://127.0.0.1:{server.port}", ["liar/app"])

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance",
        "sync",
        "--config",
        str(config),
        env=clean_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 120)

    assert process.returncode == 1
    assert stderr.decode().startswith("Error: DIGEST_INVALID: liar/app: ")
    store = Store(tmp_path / "node")
    try:
        bad_digest = Digest.parse(digest_of(image.blobs[-1]))
        assert store.manifest("liar/app", "v1") is None
        assert store.manifest("liar/app", Digest.parse(image.digest)) is None
        assert store.blob_size("liar/app", bad_digest) is None
        assert not store.blob_path(bad_digest).exists()
        assert list(store.layout.uploads.iterdir()) == []
    finally:
        store.close()


async def test_an_upstream_with_a_schedule_runs_only_when_an_occurrence_passed(
    upstream: DistributionRegistry, tmp_path: Path
) -> None:
    """`schedule` on an `[[upstream]]`: cron, UTC, evaluated with an injected clock."""
    async with aiohttp.ClientSession(headers=AUTH) as http:
        await push_image(http, upstream.url, "mirror/app", make_image("nightly"), "v1")
    config = load(node_config(tmp_path, upstream.url, ["mirror/app"], schedule="0 3 * * *"), None)
    store = Store(config.data_dir)
    clock = [datetime(2030, 1, 1, 2, 0, tzinfo=UTC)]
    try:

        async def run_at(hour: int, minute: int) -> dict:
            clock[0] = datetime(2030, 1, 1, hour, minute, tzinfo=UTC)
            report = await run_sync_in_process(store, config, clock=lambda: clock[0])
            return report.to_json()["sources"][0]

        first = await run_at(2, 0)  # never ran: due
        assert first["feed"] is None and first["tagsMoved"] == 1 and first["requests"] > 0
        async with aiohttp.ClientSession(headers=AUTH) as http:
            await push_image(http, upstream.url, "mirror/app", make_image("later"), "v2")
        waiting = await run_at(2, 59)  # 03:00 has not come: nothing asked
        assert waiting["feed"] == "not due" and waiting["requests"] == 0
        assert waiting["warnings"] == [
            "not due: its schedule '0 3 * * *' runs it next at 2030-01-01T03:00:00Z"
        ]
        assert store.manifest("mirror/app", "v2") is None
        due = await run_at(3, 1)
        assert due["tagsMoved"] == 1
        assert store.manifest("mirror/app", "v2") is not None
        assert (await run_at(3, 30))["feed"] == "not due"
    finally:
        store.close()


def test_a_bad_upstream_schedule_is_a_config_error(tmp_path: Path) -> None:
    path = node_config(tmp_path, "http://127.0.0.1:9", ["mirror/app"], schedule="every night")
    result = run_sync("--config", str(path))
    assert result.returncode == 2
    assert "schedule" in result.stderr and "cron" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_upstream_semver_range_is_a_config_error(tmp_path: Path) -> None:
    path = node_config(tmp_path, "http://127.0.0.1:9", ["mirror/app"], tag_semver=">=1.2 <2.x")
    result = run_sync("--config", str(path))
    assert result.returncode == 2
    assert "'tag_semver' must be a semver range" in result.stderr
    assert "'2.x' in semver range '>=1.2 <2.x' is not a version" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_an_upstream_over_tls_with_basic_auth_is_mirrored_with_its_ca(
    tmp_path: Path,
) -> None:
    """distribution serving HTTPS with a certificate from a private CA, htpasswd Basic auth:
    `ca_file` makes it trusted; without it the sync refuses in one line."""
    certs = tmp_path / "certs"
    made = subprocess.run(
        [sys.executable, "-m", "appliance", "tls", "generate", "--host", "127.0.0.1",
         "--data-dir", str(certs)],
        env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    layout = Layout(certs)
    tls = (layout.tls_server_cert, layout.tls_server_key)
    registry = DistributionRegistry(tmp_path / "distribution", USER, PASSWORD, tls=tls).start()
    try:
        image = make_image("over-tls", layers=2)
        trust = ssl.create_default_context(cafile=str(layout.tls_ca_cert))
        connector = aiohttp.TCPConnector(ssl=trust)
        async with aiohttp.ClientSession(headers=AUTH, connector=connector) as http:
            await push_image(http, registry.url, "mirror/app", image, "v1")

        untrusted = run_sync("--config", str(node_config(tmp_path, registry.url, ["mirror/app"])))
        assert untrusted.returncode == 1
        assert untrusted.stderr.startswith("Error: UNTRUSTED_UPSTREAM: "), untrusted.stderr

        config = node_config(
            tmp_path, registry.url, ["mirror/app"], ca_file=str(layout.tls_ca_cert)
        )
        report = sync_json("--config", str(config))
        assert report["total"]["tagsMoved"] == 1
        store = Store(tmp_path / "node")
        try:
            stored = store.manifest("mirror/app", "v1")
            assert stored is not None and stored.content == image.manifest
            for blob in image.blobs:
                assert store.blob_path(Digest.parse(digest_of(blob))).read_bytes() == blob
        finally:
            store.close()
    finally:
        registry.stop()
