"""The storage layer seen from its callers (the registry and, later, sync): schema versions,
the change feed and the outbox. These use `Store` in-process: nothing else can set a node's role
until the hierarchy exists."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlite_utils
from support.oci import make_image

from appliance.oci.digests import Digest
from appliance.oci.errors import OCIError
from appliance.storage.deletion import kept_because
from appliance.storage.schema import SCHEMA_VERSION, SchemaTooNew
from appliance.storage.store import Origin, Store


async def _put_blobs(store: Store, repository: str, blobs: list[bytes]) -> None:
    for data in blobs:
        session = store.uploads.create(repository)

        async def body(data: bytes = data):
            yield data

        await store.finish_upload(session, Digest.of(data), body())


def _rows(store: Store, table: str) -> list[tuple]:
    return store.conn.execute(
        f"SELECT repository, op, tag, digest FROM {table} ORDER BY seq"
    ).fetchall()


def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "registry.db")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer than this release"):
        Store(tmp_path)


def test_a_new_database_is_at_the_current_schema_version(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_local_writes_on_a_node_with_a_parent_go_to_the_outbox(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.node.role = "connected"
    image = make_image("outbox")
    await _put_blobs(store, "app", image.blobs)
    digest, _ = store.put_manifest("app", image.manifest, image.media_type, ["v1"])
    store.delete_tag("app", "v1")
    expected = [
        ("app", "put", None, str(digest)),
        ("app", "put", "v1", str(digest)),
        ("app", "delete", "v1", str(digest)),
    ]
    assert _rows(store, "outbox") == expected
    assert _rows(store, "changes") == expected


async def test_content_from_the_parent_is_not_sent_back_up(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.node.role = "connected"
    image = make_image("from-parent")
    await _put_blobs(store, "app", image.blobs)
    store.put_manifest("app", image.manifest, image.media_type, ["v1"], origin=Origin.PARENT)
    assert _rows(store, "outbox") == []
    assert [op for _, op, _, _ in _rows(store, "changes")] == ["put", "put"]


async def test_maintenance_deletes_reach_the_feed_but_never_the_outbox(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.node.role = "connected"
    image = make_image("kept")
    await _put_blobs(store, "app", image.blobs)
    digest, _ = store.put_manifest("app", image.manifest, image.media_type, ["v1"])
    assert kept_because(store, "app", str(digest)) == "a local push not yet sent to the parent"
    store.conn.execute("DELETE FROM outbox")
    assert kept_because(store, "app", str(digest)) is None
    store.delete_manifest("app", digest, origin=Origin.MAINTENANCE)
    assert _rows(store, "outbox") == []
    assert _rows(store, "changes")[-2:] == [
        ("app", "delete", "v1", str(digest)),
        ("app", "delete", None, str(digest)),
    ]


async def test_a_refused_manifest_writes_no_feed_or_outbox_row(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.node.role = "connected"
    image = make_image("missing-blobs")
    with pytest.raises(OCIError) as refused:
        store.put_manifest("app", image.manifest, image.media_type, ["v1"])
    assert refused.value.code.name == "MANIFEST_BLOB_UNKNOWN"
    assert _rows(store, "outbox") == [] and _rows(store, "changes") == []
    assert store.manifest("app", "v1") is None


async def test_a_root_or_development_node_keeps_no_outbox(tmp_path: Path) -> None:
    store = Store(tmp_path)
    image = make_image("no-parent")
    await _put_blobs(store, "app", image.blobs)
    store.put_manifest("app", image.manifest, image.media_type, ["v1"])
    assert _rows(store, "outbox") == []
    assert len(_rows(store, "changes")) == 2


async def test_moving_a_tag_to_the_same_digest_records_no_change(tmp_path: Path) -> None:
    store = Store(tmp_path)
    image = make_image("same", layers=0)
    await _put_blobs(store, "app", image.blobs)
    store.put_manifest("app", image.manifest, image.media_type, ["v1"])
    store.put_manifest("app", image.manifest, image.media_type, ["v1"])
    assert len(_rows(store, "changes")) == 2


async def test_a_database_of_an_older_release_migrates_forward_keeping_its_content(
    tmp_path: Path,
) -> None:
    # A data directory as the first release left it: schema version 1 with content in it.
    store = Store(tmp_path)
    image = make_image("old")
    await _put_blobs(store, "app", image.blobs)
    digest, _ = store.put_manifest("app", image.manifest, image.media_type, ["v1"])
    store.close()
    conn = sqlite3.connect(tmp_path / "registry.db")
    for table in (
        "token_passwords",
        "tokens",
        "scope_maps",
        "connected_registries",
        "manifest_pulls",
        "blob_pulls",
    ):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("DROP INDEX idx_uploads_digest")
    conn.execute("ALTER TABLE uploads DROP COLUMN digest")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()

    upgraded = Store(tmp_path)
    assert upgraded.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert sqlite_utils.Database(upgraded.conn)["tokens"].exists()
    stored = upgraded.manifest("app", "v1")
    assert stored is not None and stored.digest == str(digest)
