"""Last-pulled times: noted by GETs, written by the service in batches and at shutdown."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from support.oci import digest_of, make_image, push_image

from appliance.storage.store import Store

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from support.server import RegistryProcess


async def test_pulls_are_recorded_by_gets_and_kept_across_a_restart(
    start_registry: Callable[..., RegistryProcess], http: aiohttp.ClientSession
) -> None:
    server = start_registry()
    image = make_image()
    await push_image(http, server.url, "app", image, "v1")
    pulled, headed = image.blobs[0], image.blobs[1]
    async with http.get(f"{server.url}/v2/app/manifests/v1") as resp:
        assert resp.status == 200
    async with http.get(f"{server.url}/v2/app/blobs/{digest_of(pulled)}") as resp:
        assert resp.status == 200
    async with http.head(f"{server.url}/v2/app/blobs/{digest_of(headed)}") as resp:
        assert resp.status == 200
    server.stop()  # a clean stop writes the notes not yet flushed

    store = Store(server.data_dir)
    try:
        assert store.pulls.manifest_last_pulled("app", image.digest) is not None
        assert store.pulls.manifest_last_pulled("other", image.digest) is None
        assert store.pulls.blob_last_pulled(digest_of(pulled)) is not None
        assert store.pulls.blob_last_pulled(digest_of(headed)) is None  # a HEAD is not a pull
    finally:
        store.close()


def test_a_flush_keeps_the_latest_moment(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    try:
        store.pulls.note_manifest("app", "sha256:" + "a" * 64, "2026-01-02T00:00:00.000000Z")
        store.pulls.flush()
        store.pulls.note_manifest("app", "sha256:" + "a" * 64, "2026-01-01T00:00:00.000000Z")
        assert store.pulls.flush() == 1
        assert store.pulls.flush() == 0
        assert (
            store.pulls.manifest_last_pulled("app", "sha256:" + "a" * 64)
            == "2026-01-02T00:00:00.000000Z"
        )
    finally:
        store.close()
