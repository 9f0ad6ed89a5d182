"""The SQLite schema and its forward migrations.

`PRAGMA user_version` is the schema version. Each migration runs in one transaction; a database
whose version is newer than this code knows is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlite_utils

from appliance.storage.space import refused_when_full


class SchemaTooNew(Exception):
    """The database was written by a newer release; opening it could corrupt it."""


def _v1(db: sqlite_utils.Database) -> None:
    db.create_table(
        "repositories",
        {"id": int, "name": str, "created_at": str},
        pk="id",
        not_null=["name", "created_at"],
    )
    db["repositories"].create_index(["name"], unique=True)
    db.create_table(
        "blobs",
        {"digest": str, "size": int, "created_at": str},
        pk="digest",
        not_null=["size", "created_at"],
    )
    db.create_table(
        "repository_blobs",
        {"repository_id": int, "digest": str, "created_at": str},
        pk=("repository_id", "digest"),
        foreign_keys=[("repository_id", "repositories", "id"), ("digest", "blobs", "digest")],
        not_null=["created_at"],
    )
    # Manifests are small (≤ 4 MiB) and read on every pull: their bytes live in the database, so a
    # manifest and its tag become visible in one transaction.
    db.create_table(
        "manifests",
        {
            "id": int,
            "digest": str,
            "media_type": str,
            "size": int,
            "content": bytes,
            "subject": str,
            "artifact_type": str,
            "annotations": str,
            "created_at": str,
        },
        pk="id",
        not_null=["digest", "media_type", "size", "content", "created_at"],
    )
    db["manifests"].create_index(["digest"], unique=True)
    db["manifests"].create_index(["subject"])
    # What each manifest references: blobs and child manifests (for GC and for sync's copy order).
    db.create_table(
        "manifest_references",
        {"digest": str, "child": str, "kind": str},
        pk=("digest", "child"),
        not_null=["kind"],
    )
    db["manifest_references"].create_index(["child"])
    # `origin` records where content came from: 'local' (a client here), 'parent' (pull sync) or
    # 'child' (a ReadWrite child's push sync); only non-parent writes go up again.
    db.create_table(
        "repository_manifests",
        {"repository_id": int, "digest": str, "origin": str, "created_at": str},
        pk=("repository_id", "digest"),
        foreign_keys=[("repository_id", "repositories", "id")],
        not_null=["origin", "created_at"],
    )
    db.create_table(
        "tags",
        {"repository_id": int, "name": str, "digest": str, "origin": str, "updated_at": str},
        pk=("repository_id", "name"),
        foreign_keys=[("repository_id", "repositories", "id")],
        not_null=["digest", "origin", "updated_at"],
    )
    db["tags"].create_index(["repository_id", "digest"])
    db.create_table(
        "uploads",
        {"id": str, "repository": str, "created_at": float, "updated_at": float},
        pk="id",
        not_null=["repository", "created_at", "updated_at"],
    )
    # Every content change, whatever its origin: the feed a parent serves its children
    # (PROTOCOL.md §3).
    db.create_table(
        "changes",
        {
            "seq": int,
            "repository": str,
            "op": str,
            "tag": str,
            "digest": str,
            "origin": str,
            "time": str,
        },
        pk="seq",
        not_null=["repository", "op", "digest", "origin", "time"],
    )
    # Writes that did not come from the parent, to replay upward (PROTOCOL.md §4). Written only on
    # a node that has a parent.
    db.create_table(
        "outbox",
        {"seq": int, "repository": str, "op": str, "tag": str, "digest": str, "time": str},
        pk="seq",
        not_null=["repository", "op", "digest", "time"],
    )
    # Role, mode, parent and other state that is not the operator's config (DESIGN.md §7).
    db.create_table("node_state", {"key": str, "value": str}, pk="key", not_null=["value"])


def _v2(db: sqlite_utils.Database) -> None:
    """Client access: scope maps, tokens and their password hashes. `origin` is 'local' for what
    was created on this node, 'parent' for what a parent sent (never edited here)."""
    db.create_table(
        "scope_maps",
        {
            "name": str,
            "description": str,
            "permissions": str,
            "origin": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="name",
        not_null=["permissions", "origin", "created_at", "updated_at"],
    )
    db.create_table(
        "tokens",
        {
            "name": str,
            "scope_map": str,
            "status": str,
            "origin": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="name",
        foreign_keys=[("scope_map", "scope_maps", "name")],
        not_null=["scope_map", "status", "origin", "created_at", "updated_at"],
    )
    db.create_table(
        "token_passwords",
        {"token": str, "name": str, "hash": str, "expiry": str, "created_at": str},
        pk=("token", "name"),
        foreign_keys=[("token", "tokens", "name")],
        not_null=["hash", "created_at"],
    )


def _v3(db: sqlite_utils.Database) -> None:
    """The hierarchy, on a root: connected-registry resources, their settings and what their
    instances last reported. JSON columns hold lists (repositories, client tokens, details)."""
    db.create_table(
        "connected_registries",
        {
            "name": str,
            "mode": str,
            "parent": str,
            "repositories": str,
            "tag_include": str,
            "tag_exclude": str,
            "client_tokens": str,
            "sync_schedule": str,
            "sync_window": str,
            "message_ttl": str,
            "log_level": str,
            "sync_token": str,
            "activation_status": str,
            "instance_id": str,
            "last_activity_time": str,
            "last_sync_time": str,
            "reported_state": str,
            "version": str,
            "login_server": str,
            "tls": str,
            "status_details": str,
            "resync_requested": int,
            "created_at": str,
            "updated_at": str,
        },
        pk="name",
        not_null=[
            "mode",
            "repositories",
            "client_tokens",
            "sync_schedule",
            "message_ttl",
            "log_level",
            "sync_token",
            "activation_status",
            "status_details",
            "created_at",
            "updated_at",
        ],
    )
    db["connected_registries"].create_index(["parent"])


def _v4(db: sqlite_utils.Database) -> None:
    """Blob downloads that outlive a sync run: the upload session a sync fills records the
    digest it is fetching, so the next run (for any repository needing that blob) resumes it
    with `Range`. NULL for a client's upload. The row goes with its session (finished, refused
    or purged after 24 h idle), so there is no separate record to drift from it."""
    db["uploads"].add_column("digest", str)
    db["uploads"].create_index(["digest"])


def _v5(db: sqlite_utils.Database) -> None:
    """A connected registry's semver tag filter (`tagSemver`), beside its regexes."""
    db["connected_registries"].add_column("tag_semver", str)


def _v6(db: sqlite_utils.Database) -> None:
    """When a client last pulled each manifest and blob (storage/pulls.py): what retention's
    `keep_pulled_within` and watermark eviction's least-recently-pulled order read."""
    db.execute(
        "CREATE TABLE manifest_pulls (repository TEXT NOT NULL, digest TEXT NOT NULL, "
        "last_pulled TEXT NOT NULL, PRIMARY KEY (repository, digest)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE blob_pulls (digest TEXT PRIMARY KEY, last_pulled TEXT NOT NULL) "
        "WITHOUT ROWID"
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3, _v4, _v5, _v6]
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, group_commit: bool = False) -> sqlite_utils.Database:
    """Open (creating or migrating) the registry database.

    The connection is in autocommit mode; writers group statements with
    `write_transaction(db)`.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # A write a client saw acknowledged must survive a power cut: FULL fsyncs every commit; the
    # server instead commits with NORMAL and fsyncs the WAL once per batch (durability.py).
    conn.execute(f"PRAGMA synchronous={'NORMAL' if group_commit else 'FULL'}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    db = sqlite_utils.Database(conn)
    migrate(db)
    return db


def migrate(db: sqlite_utils.Database) -> None:
    with write_transaction(db):
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database has schema version {version}, newer than this release knows "
                f"({SCHEMA_VERSION}); install a newer connected-registry"
            )
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            migration(db)
            db.execute(f"PRAGMA user_version={number}")


@contextlib.contextmanager
def unsynced(db: sqlite_utils.Database) -> Iterator[None]:
    """Statements whose commit need not survive a power cut: upload-session bookkeeping, whose
    truth is the session's file. Skipping their WAL fsync keeps it off the event loop; the next
    durable commit syncs them anyway. Inside a transaction it changes nothing."""
    conn = db.conn
    if conn.in_transaction:
        yield
        return
    level = conn.execute("PRAGMA synchronous").fetchone()[0]
    conn.execute("PRAGMA synchronous=OFF")
    try:
        with refused_when_full():
            yield
    finally:
        conn.execute(f"PRAGMA synchronous={level}")


@contextlib.contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """One transaction that takes the write lock up front (BEGIN IMMEDIATE).

    The service and CLI commands write the same database; a transaction that reads and then
    writes would otherwise fail at once with "database is locked" when another process wrote in
    between, instead of waiting its turn (busy_timeout). Nested use joins the outer transaction.
    A full disk, met by a statement or by the COMMIT, rolls it all back and raises `DiskFull`.
    """
    conn = db.conn
    if conn.in_transaction:
        yield
        return
    with refused_when_full():
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            # After SQLITE_FULL, SQLite has rolled back by itself (a second ROLLBACK would fail
            # and hide the error); a COMMIT that failed otherwise would leave it open.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
