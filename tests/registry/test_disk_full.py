"""A full disk: the real server on a 64 MiB ext4 the test makes and fills.

The disk is a file, formatted and loop-mounted for this module, the data directory on it. A
filler file the test controls takes the free space, all of it or all but some, so which write
finds the disk full is decided by the test. A write that does not fit is refused with 507 and
an OCI body (DENIED, "disk is full"); nothing of it stays (no blob file without its row, no
upload bytes of the refused request); what was stored still pulls byte-exact; and once the
filler goes, writes succeed again.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from support.oci import (
    OCI_MANIFEST,
    Image,
    canonical,
    descriptor,
    digest_of,
    make_image,
    push_image,
)
from support.registry import absolute, assert_oci_error, get_blob, start_upload, stream, with_query
from support.server import RegistryProcess

MiB = 1 << 20
FILLER = "filler"


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The mount point of a fresh 64 MiB ext4 (mounting needs root, as CI has; no root
    reserve: the server runs as root here, and the reserve would only move where "full" is)."""
    root = tmp_path_factory.mktemp("small-disk")
    image, mount = root / "disk.img", root / "mnt"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)  # the loop device goes with it


@pytest.fixture(scope="module")
def server(small_disk: Path) -> Iterator[RegistryProcess]:
    # The data directory is the mount itself: the server's log goes beside it, off the disk.
    process = RegistryProcess(small_disk).start()
    yield process
    process.stop()


@pytest.fixture
def filler(small_disk: Path) -> Iterator[Path]:
    path = small_disk / FILLER
    yield path
    path.unlink(missing_ok=True)


def available(mount: Path) -> int:
    stat = os.statvfs(mount)
    return stat.f_bavail * stat.f_frsize


def fill(path: Path, leave: int = 0) -> None:
    """Grow the filler until the disk has `leave` bytes free, or none at all."""
    with path.open("ab") as f:
        def grow(size: int) -> None:
            os.posix_fallocate(f.fileno(), os.fstat(f.fileno()).st_size, size)

        if leave:
            grow(available(path.parent) - leave)
            return
        step = available(path.parent)
        while step >= 4096:  # until not one block more fits
            try:
                grow(step)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
                step //= 2
    assert available(path.parent) == 0


def run_sync(config: Path) -> subprocess.CompletedProcess[str]:
    """`connected-registry sync` in a child process, as the timer runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTED_REGISTRY_")}
    return subprocess.run(
        [sys.executable, "-m", "appliance", "sync", "--config", str(config)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )


def blob_files(data_dir: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (data_dir / "blobs" / "sha256").glob("*/*")}


def blob_rows(data_dir: Path) -> set[str]:
    db = sqlite3.connect(f"{(data_dir / 'registry.db').as_uri()}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT digest FROM blobs")}
    finally:
        db.close()


def upload_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "uploads").iterdir())


async def assert_disk_full(resp: aiohttp.ClientResponse) -> None:
    error = await assert_oci_error(resp, 507, "DENIED")
    assert "disk is full" in error["message"]


async def push_small_blob(
    http: aiohttp.ClientSession, base: str, repo: str, data: bytes
) -> aiohttp.ClientResponse:
    """POST then PUT with the body; the first answer that is not a step forward."""
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        await resp.read()
        if resp.status != 202:
            return resp
        location = absolute(base, resp.headers["Location"])
    async with http.put(with_query(location, ("digest", digest_of(data))), data=data) as resp:
        await resp.read()
        return resp


async def assert_pulls_exact(
    http: aiohttp.ClientSession, base: str, repo: str, image: Image
) -> None:
    async with http.get(
        f"{base}/v2/{repo}/manifests/latest", headers={"Accept": image.media_type}
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.read() == image.manifest
    for blob in image.blobs:
        assert await get_blob(http, base, repo, digest_of(blob)) == blob


def image_with_layer(seed: str, layer: bytes) -> Image:
    config = canonical({"architecture": "amd64", "os": "linux", "seed": seed})
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
    }
    return Image(canonical(doc), OCI_MANIFEST, [config, layer])


async def test_a_blob_bigger_than_the_free_space_is_refused_with_507_and_leaves_nothing(
    server: RegistryProcess, filler: Path, http: aiohttp.ClientSession, repo: str
) -> None:
    data_dir, base = server.data_dir, server.url
    stored = image_with_layer("stored", os.urandom(2 * MiB))
    await push_image(http, base, repo, stored, "latest")
    fill(filler, leave=8 * MiB)
    too_big = os.urandom(24 * MiB)

    # Streamed, as skopeo pushes: one PATCH with the whole layer.
    location = await start_upload(http, base, repo)
    async with http.patch(location, data=stream(too_big, 256 * 1024)) as resp:
        await assert_disk_full(resp)
    async with http.get(location) as resp:
        assert resp.status == 204
        assert resp.headers["Range"] == "0-0"  # nothing was acknowledged: nothing is kept
    # Monolithic, one POST with the digest.
    async with http.post(
        f"{base}/v2/{repo}/blobs/uploads/?digest={digest_of(too_big)}", data=too_big
    ) as resp:
        await assert_disk_full(resp)

    assert upload_bytes(data_dir) == 0
    assert available(data_dir) > 6 * MiB  # the refused bytes were given back
    assert blob_files(data_dir) == blob_rows(data_dir)
    # Not stuck: a blob that fits is stored.
    resp = await push_small_blob(http, base, repo, b"twelve bytes")
    assert resp.status == 201, await resp.text()

    fill(filler)
    resp = await push_small_blob(http, base, repo, b"twelve more!")
    await assert_disk_full(resp)
    assert blob_files(data_dir) == blob_rows(data_dir)
    await assert_pulls_exact(http, base, repo, stored)

    filler.unlink()
    later = make_image("after the disk was full")
    await push_image(http, base, repo, later, "later")
    resp = await push_small_blob(http, base, repo, b"twelve more!")
    assert resp.status == 201, await resp.text()
    await assert_pulls_exact(http, base, repo, stored)


async def test_a_commit_the_full_disk_refuses_leaves_no_blob_file_and_the_session_resumable(
    server: RegistryProcess, filler: Path, http: aiohttp.ClientSession, repo: str
) -> None:
    """The blob's bytes fit, its move into place needs no space, and the row that would make it
    visible cannot be written: the file goes back into the session, which can be finished
    once there is room. A manifest the database cannot grow for is refused the same way."""
    data_dir, base = server.data_dir, server.url
    stored = image_with_layer("stored before", os.urandom(MiB))
    await push_image(http, base, repo, stored, "latest")
    # A blob whose folder already exists: placing it then needs no new directory block.
    folders = {p.name for p in (data_dir / "blobs" / "sha256").iterdir()}
    blob = next(
        data
        for n in range(10_000)
        if digest_of(data := f"blob number {n}".encode())[7:9] in folders
    )
    location = await start_upload(http, base, repo)
    async with http.patch(location, data=blob) as resp:
        assert resp.status == 202, await resp.text()

    fill(filler)
    async with http.put(with_query(location, ("digest", digest_of(blob)))) as resp:
        await assert_disk_full(resp)
    assert digest_of(blob) not in blob_files(data_dir)
    assert blob_files(data_dir) == blob_rows(data_dir)
    async with http.get(location) as resp:
        assert resp.headers["Range"] == f"0-{len(blob) - 1}"

    async with http.put(
        f"{base}/v2/{repo}/manifests/moved",
        data=stored.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        await assert_disk_full(resp)  # a tag, even: the write-ahead log cannot grow
    # A manifest with 2 MiB of annotations: the write-ahead log cannot grow for it.
    annotated = canonical({
        **json.loads(stored.manifest),
        "annotations": {"filler": "x" * (2 * MiB)},
    })
    async with http.put(
        f"{base}/v2/{repo}/manifests/annotated",
        data=annotated,
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        await assert_disk_full(resp)
    await assert_pulls_exact(http, base, repo, stored)

    filler.unlink()
    async with http.put(with_query(location, ("digest", digest_of(blob)))) as resp:
        assert resp.status == 201, await resp.text()
    assert await get_blob(http, base, repo, digest_of(blob)) == blob
    async with http.put(
        f"{base}/v2/{repo}/manifests/annotated",
        data=annotated,
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        assert resp.status == 201, await resp.text()
    assert blob_files(data_dir) == blob_rows(data_dir)


async def test_a_sync_that_fills_the_disk_fails_with_one_clear_line_and_completes_later(
    server: RegistryProcess,
    filler: Path,
    http: aiohttp.ClientSession,
    repo: str,
    start_registry: Callable[..., RegistryProcess],
    tmp_path: Path,
) -> None:
    data_dir = server.data_dir
    upstream = start_registry()
    big = image_with_layer("synced", os.urandom(16 * MiB))
    await push_image(http, upstream.url, repo, big, "latest")
    config = tmp_path / "node.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n[[upstream]]\nurl = "{upstream.url}"\n'
        f'repositories = ["{repo}"]\n'
    )
    fill(filler, leave=4 * MiB)

    result = run_sync(config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"DENIED: {repo}: the registry's disk is full" in result.stderr
    assert upload_bytes(data_dir) == 0
    assert blob_files(data_dir) == blob_rows(data_dir)

    filler.unlink()
    result = run_sync(config)
    assert result.returncode == 0, result.stdout + result.stderr
    await assert_pulls_exact(http, server.url, repo, big)
