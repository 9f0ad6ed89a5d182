"""`Store`: the registry's content — repositories, blobs, manifests, tags — and the only way to
change it.

Reads are single prepared queries on one long-lived connection, run on the event loop (they take
microseconds). Writes that make content visible are one transaction each, and a change-feed row
(and, on a node with a parent, an outbox row) is written in that same transaction.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from appliance.oci.digests import Digest
from appliance.oci.errors import ErrorCode, OCIError
from appliance.oci.manifests import (
    MAX_MANIFEST_BYTES,
    ParsedManifest,
    parse_manifest,
    required_blobs,
)
from appliance.storage.blobs import place_blob_file, withdraw_blob_file
from appliance.storage.durability import WalSync
from appliance.storage.feed import ChangeFeed
from appliance.storage.layout import Layout
from appliance.storage.node import Node
from appliance.storage.outbox import Outbox
from appliance.storage.pulls import Pulls
from appliance.storage.schema import connect, write_transaction
from appliance.storage.space import DiskFull, refused_when_full
from appliance.storage.timestamps import timestamp
from appliance.storage.uploads import Uploads, UploadStatus


class Origin(StrEnum):
    """Where a write came from; decides whether it is replayed to the parent."""

    LOCAL = "local"
    PARENT = "parent"
    CHILD = "child"
    # GC, retention and eviction: recorded in the change feed (children follow a retention
    # delete) but never in the outbox, so maintenance never travels up to the parent.
    MAINTENANCE = "maintenance"


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Holdings:
    """How much content this node holds (for status)."""

    repositories: int
    tags: int
    blobs: int
    blob_bytes: int


@dataclass(frozen=True, slots=True)
class Referrer:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None

    def descriptor(self) -> dict:
        d: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        if self.annotations:
            d["annotations"] = self.annotations
        return d


class Store:
    def __init__(self, data_dir: Path, group_commit: bool = False) -> None:
        """With `group_commit` (the server), writes are durable once `flush()` returns; without
        (commands, tests), every commit is durable when it returns."""
        self.layout = Layout(data_dir)
        self.layout.create()
        self.db = connect(self.layout.database, group_commit)
        self.conn = self.db.conn
        self._wal_sync = (
            WalSync(self.layout.database, lambda: self.conn.total_changes)
            if group_commit
            else None
        )
        self.uploads = Uploads(self.layout, self.db)
        self.node = Node(self.conn)
        self.outbox = Outbox(self.conn)
        self.feed = ChangeFeed(self.conn)
        self.pulls = Pulls(self.db)

    def close(self) -> None:
        self.conn.close()
        if self._wal_sync is not None:
            self._wal_sync.close()

    async def flush(self) -> None:
        """Make every commit so far durable; call before acknowledging a write."""
        if self._wal_sync is not None:
            await self._wal_sync.sync()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; nested, it joins the outer one. Inside it, only storage
        calls: nothing that waits on the network (docs/ARCHITECTURE.md, storage interfaces)."""
        with write_transaction(self.db):
            yield

    # -- node state ------------------------------------------------------------------------
    # By key, for the callers not yet on `store.node`'s typed attributes.

    def state(self, key: str) -> str | None:
        return self.node.get(key)

    def set_state(self, key: str, value: str) -> None:
        self.node.set(key, value)

    def state_keys(self, prefix: str) -> list[str]:
        return self.node.keys(prefix)

    def state_items(self, prefix: str) -> dict[str, str]:
        """The node_state keys that start with `prefix`, without it, and their values."""
        rows = self.conn.execute(
            "SELECT key, value FROM node_state WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, prefix + "\U0010ffff"),
        )
        return {key.removeprefix(prefix): value for key, value in rows}

    def delete_state(self, key: str) -> None:
        self.node.delete(key)

    @property
    def has_parent(self) -> bool:
        return self.node.role == "connected"

    # -- reads -----------------------------------------------------------------------------

    def holdings(self) -> Holdings:
        blobs, blob_bytes = self.conn.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM blobs"
        ).fetchone()
        return Holdings(
            self.conn.execute("SELECT count(*) FROM repositories").fetchone()[0],
            self.conn.execute("SELECT count(*) FROM tags").fetchone()[0],
            blobs,
            blob_bytes,
        )

    def repository_id(self, name: str) -> int | None:
        row = self.conn.execute("SELECT id FROM repositories WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def blob_size(self, repository: str, digest: Digest) -> int | None:
        """The blob's size if it is linked to the repository, else None."""
        row = self.conn.execute(
            "SELECT b.size FROM repositories r "
            "JOIN repository_blobs rb ON rb.repository_id = r.id "
            "JOIN blobs b ON b.digest = rb.digest "
            "WHERE r.name = ? AND rb.digest = ?",
            (repository, str(digest)),
        ).fetchone()
        return row[0] if row else None

    def blob_path(self, digest: Digest) -> Path:
        return self.layout.blob(digest)

    def manifest(self, repository: str, reference: str | Digest) -> StoredManifest | None:
        if isinstance(reference, Digest):
            row = self.conn.execute(
                "SELECT m.digest, m.media_type, m.content FROM repositories r "
                "JOIN repository_manifests rm ON rm.repository_id = r.id "
                "JOIN manifests m ON m.digest = rm.digest "
                "WHERE r.name = ? AND rm.digest = ?",
                (repository, str(reference)),
            ).fetchone()
        else:
            row = self.conn.execute(
                "SELECT m.digest, m.media_type, m.content FROM repositories r "
                "JOIN tags t ON t.repository_id = r.id "
                "JOIN manifests m ON m.digest = t.digest "
                "WHERE r.name = ? AND t.name = ?",
                (repository, reference),
            ).fetchone()
        return StoredManifest(*row) if row else None

    def tags(self, repository: str, limit: int | None, last: str | None) -> tuple[list[str], bool]:
        """Tags in lexical (byte) order after `last`; the flag says whether more follow."""
        repository_id = self.repository_id(repository)
        if repository_id is None:
            raise OCIError(ErrorCode.NAME_UNKNOWN, detail={"name": repository})
        return self._page(
            "SELECT name FROM tags WHERE repository_id = ? AND name > ? ORDER BY name LIMIT ?",
            (repository_id,),
            limit,
            last,
        )

    def tag_origin(self, repository: str, tag: str) -> Origin | None:
        """Who last moved the tag (sync leaves a tag changed on this node alone)."""
        row = self.conn.execute(
            "SELECT t.origin FROM tags t JOIN repositories r ON r.id = t.repository_id "
            "WHERE r.name = ? AND t.name = ?",
            (repository, tag),
        ).fetchone()
        return Origin(row[0]) if row else None

    def repositories(self, limit: int | None, last: str | None) -> tuple[list[str], bool]:
        return self._page(
            "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?",
            (),
            limit,
            last,
        )

    def _page(
        self, sql: str, params: tuple, limit: int | None, last: str | None
    ) -> tuple[list[str], bool]:
        fetch = -1 if limit is None else limit + 1
        names = [row[0] for row in self.conn.execute(sql, (*params, last or "", fetch))]
        if limit is not None and len(names) > limit:
            return names[:limit], True
        return names, False

    def referrers(
        self, repository: str, subject: Digest, artifact_type: str | None
    ) -> list[Referrer]:
        sql = (
            "SELECT m.media_type, m.digest, m.size, m.artifact_type, m.annotations "
            "FROM manifests m JOIN repository_manifests rm ON rm.digest = m.digest "
            "JOIN repositories r ON r.id = rm.repository_id "
            "WHERE m.subject = ? AND r.name = ?"
        )
        params: tuple = (str(subject), repository)
        if artifact_type is not None:
            sql += " AND m.artifact_type = ?"
            params += (artifact_type,)
        return [
            Referrer(mt, d, size, at, json.loads(ann) if ann else None)
            for mt, d, size, at, ann in self.conn.execute(sql + " ORDER BY m.digest", params)
        ]

    # -- blob writes -----------------------------------------------------------------------

    async def finish_upload(
        self,
        session: UploadStatus,
        expected: Digest,
        body: AsyncIterator[bytes] | None,
        origin: Origin = Origin.LOCAL,
    ) -> int:
        """Append an optional last piece, verify the digest, and make the blob visible in the
        session's repository. A mismatch removes the session: its bytes can never become valid.
        A full disk (`DiskFull`) leaves no blob file behind and the session as it was before
        this call, to be finished again once there is room."""
        before = session
        size = session.size
        if body is not None:
            size = await self.uploads.append(session, body)
            session = UploadStatus(session.session_id, session.repository, size)
        actual = await self.uploads.digest(session)
        if actual != expected.hex:
            self.uploads.cancel(session)
            raise OCIError(
                ErrorCode.DIGEST_INVALID,
                f"uploaded content has digest sha256:{actual}, not {expected}",
                detail={"expected": str(expected), "actual": f"sha256:{actual}"},
            )
        source = self.layout.upload(session.session_id)
        placed: int | None = None
        try:
            with refused_when_full():
                if size == 0:
                    source.touch()  # the empty blob: no write made the file
                placed = await asyncio.get_running_loop().run_in_executor(
                    None, place_blob_file, self.layout, source, expected
                )
            with write_transaction(self.db):
                self._link_blob(session.repository, expected, size)
                self.uploads.forget(session.session_id)
        except DiskFull:
            # No await from here on: no commit of the same digest in this process can slip in
            # between the check for its row and the file's withdrawal.
            if placed is not None and not self._has_blob_row(expected):
                withdraw_blob_file(self.layout, expected, placed, source)
            self.uploads.restore(before)
            raise
        await self.flush()
        return size

    def _has_blob_row(self, digest: Digest) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM blobs WHERE digest = ?", (str(digest),)).fetchone()
            is not None
        )

    def mount_blob(self, repository: str, digest: Digest, source: str) -> bool:
        """Link a blob that is linked to `source` into `repository` too; False if it is not
        there to mount."""
        size = self.blob_size(source, digest)
        if size is None or not self.layout.blob(digest).exists():
            return False
        with write_transaction(self.db):
            self._link_blob(repository, digest, size)
        return True

    def repositories_with_blob(self, digest: Digest) -> list[str]:
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT r.name FROM repository_blobs rb JOIN repositories r "
                "ON r.id = rb.repository_id WHERE rb.digest = ? ORDER BY r.name",
                (str(digest),),
            )
        ]

    def _link_blob(self, repository: str, digest: Digest, size: int) -> None:
        now = timestamp()
        repository_id = self._ensure_repository(repository, now)
        self.conn.execute(
            "INSERT INTO blobs (digest, size, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (digest) DO NOTHING",
            (str(digest), size, now),
        )
        self.conn.execute(
            "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (repository_id, str(digest), now),
        )

    def _ensure_repository(self, name: str, now: str) -> int:
        repository_id = self.repository_id(name)
        if repository_id is None:
            repository_id = self.conn.execute(
                "INSERT INTO repositories (name, created_at) VALUES (?, ?)", (name, now)
            ).lastrowid
        return repository_id

    def delete_blob(self, repository: str, digest: Digest) -> None:
        """Unlink a blob from a repository; its file goes at the next garbage collection."""
        repository_id = self.repository_id(repository)
        with write_transaction(self.db):
            cursor = self.conn.execute(
                "DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?",
                (repository_id, str(digest)),
            )
        if cursor.rowcount == 0:
            raise OCIError(ErrorCode.BLOB_UNKNOWN, detail={"digest": str(digest)})

    # -- manifest writes -------------------------------------------------------------------

    def put_manifest(
        self,
        repository: str,
        body: bytes,
        content_type: str,
        tags: list[str],
        expected: Digest | None = None,
        origin: Origin = Origin.LOCAL,
    ) -> tuple[Digest, ParsedManifest]:
        """Store a manifest byte-exact and point `tags` at it, in one transaction.

        Everything it references must already be in the repository (MANIFEST_BLOB_UNKNOWN),
        except its `subject`, which the spec lets arrive later.
        """
        if len(body) > MAX_MANIFEST_BYTES:
            raise manifest_too_large(len(body))
        digest = Digest.of(body)
        if expected is not None and digest != expected:
            raise OCIError(
                ErrorCode.DIGEST_INVALID,
                f"manifest content has digest {digest}, not {expected}",
                detail={"expected": str(expected), "actual": str(digest)},
            )
        parsed = parse_manifest(body, content_type)
        repository_id = self.repository_id(repository)
        self._check_references(repository_id, parsed)
        now = timestamp()
        annotations = json.dumps(parsed.annotations) if parsed.annotations else None
        with write_transaction(self.db):
            repository_id = self._ensure_repository(repository, now)
            self.conn.execute(
                "INSERT INTO manifests (digest, media_type, size, content, subject, "
                "artifact_type, annotations, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (digest) DO NOTHING",
                (
                    str(digest),
                    parsed.media_type,
                    len(body),
                    body,
                    str(parsed.subject.digest) if parsed.subject else None,
                    parsed.referrer_artifact_type(),
                    annotations,
                    now,
                ),
            )
            self.conn.executemany(
                "INSERT INTO manifest_references (digest, child, kind) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(str(digest), str(d.digest), "blob") for d in parsed.blobs]
                + [(str(digest), str(d.digest), "manifest") for d in parsed.manifests],
            )
            inserted = self.conn.execute(
                "INSERT INTO repository_manifests (repository_id, digest, origin, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (repository_id, str(digest), origin.value, now),
            ).rowcount
            if inserted:
                self._record(repository, "put", None, digest, origin, now)
            for tag in tags:
                self._set_tag(repository_id, repository, tag, digest, origin, now)
        return digest, parsed

    def _check_references(self, repository_id: int | None, parsed: ParsedManifest) -> None:
        missing: list[str] = []
        for table, wanted in (
            ("repository_blobs", [str(d.digest) for d in required_blobs(parsed)]),
            ("repository_manifests", [str(d.digest) for d in parsed.manifests]),
        ):
            if not wanted:
                continue
            present: set[str] = set()
            if repository_id is not None:
                unique = sorted(set(wanted))
                marks = ",".join("?" * len(unique))
                present = {
                    row[0]
                    for row in self.conn.execute(
                        f"SELECT digest FROM {table} "
                        f"WHERE repository_id = ? AND digest IN ({marks})",
                        (repository_id, *unique),
                    )
                }
            missing += [d for d in wanted if d not in present]
        if missing:
            raise OCIError(
                ErrorCode.MANIFEST_BLOB_UNKNOWN,
                f"manifest references {len(missing)} blob(s) or manifest(s) not in this "
                f"repository, first {missing[0]}",
                detail={"missing": missing[:20]},
            )

    def _set_tag(
        self,
        repository_id: int,
        repository: str,
        tag: str,
        digest: Digest,
        origin: Origin,
        now: str,
    ) -> None:
        changed = self.conn.execute(
            "INSERT INTO tags (repository_id, name, digest, origin, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (repository_id, name) DO UPDATE SET "
            "digest = excluded.digest, origin = excluded.origin, updated_at = excluded.updated_at "
            "WHERE tags.digest != excluded.digest",
            (repository_id, tag, str(digest), origin.value, now),
        ).rowcount
        if changed:
            self._record(repository, "put", tag, digest, origin, now)

    def delete_tag(self, repository: str, tag: str, origin: Origin = Origin.LOCAL) -> None:
        repository_id = self.repository_id(repository)
        now = timestamp()
        with write_transaction(self.db):
            row = self.conn.execute(
                "DELETE FROM tags WHERE repository_id = ? AND name = ? RETURNING digest",
                (repository_id, tag),
            ).fetchone()
            if row is None:
                raise OCIError(ErrorCode.MANIFEST_UNKNOWN, detail={"tag": tag})
            self._record(repository, "delete", tag, Digest.parse(row[0]), origin, now)

    def delete_manifest(
        self, repository: str, digest: Digest, origin: Origin = Origin.LOCAL
    ) -> None:
        """Remove a manifest from a repository, with every tag that points at it."""
        repository_id = self.repository_id(repository)
        now = timestamp()
        with write_transaction(self.db):
            removed = self.conn.execute(
                "DELETE FROM repository_manifests WHERE repository_id = ? AND digest = ?",
                (repository_id, str(digest)),
            ).rowcount
            if not removed:
                raise OCIError(ErrorCode.MANIFEST_UNKNOWN, detail={"digest": str(digest)})
            tags = [
                row[0]
                for row in self.conn.execute(
                    "DELETE FROM tags WHERE repository_id = ? AND digest = ? RETURNING name",
                    (repository_id, str(digest)),
                )
            ]
            for tag in sorted(tags):
                self._record(repository, "delete", tag, digest, origin, now)
            self._record(repository, "delete", None, digest, origin, now)

    def remove_repository(self, repository: str, origin: Origin = Origin.PARENT) -> int:
        """Remove a repository with its tags, manifests and blob links, in one transaction
        (a repository that left a ReadOnly device's scope); the change feed records each tag
        and manifest deleted, so a child below follows. Blob files go at the next garbage
        collection. How many manifests went."""
        repository_id = self.repository_id(repository)
        if repository_id is None:
            return 0
        removed = 0
        with write_transaction(self.db):
            digests = [
                Digest.parse(row[0])
                for row in self.conn.execute(
                    "SELECT digest FROM repository_manifests WHERE repository_id = ? "
                    "ORDER BY digest",
                    (repository_id,),
                )
            ]
            for digest in digests:
                self.delete_manifest(repository, digest, origin)
                removed += 1
            # Tags of manifests already gone cannot exist (a tag needs its manifest); the links
            # and the name are all that is left.
            self.conn.execute(
                "DELETE FROM repository_blobs WHERE repository_id = ?", (repository_id,)
            )
            self.conn.execute("DELETE FROM repositories WHERE id = ?", (repository_id,))
        return removed

    # -- what push sync asks -------------------------------------------------------------

    def repositories_with_local_content(self) -> list[str]:
        """Repositories holding a tag or manifest that did not come from the parent, by name."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT r.name FROM repositories r WHERE "
                "EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = r.id AND t.origin != ?) "
                "OR EXISTS (SELECT 1 FROM repository_manifests m "
                "WHERE m.repository_id = r.id AND m.origin != ?) ORDER BY r.name",
                (Origin.PARENT.value, Origin.PARENT.value),
            )
        ]

    def local_manifests(self, repository: str) -> list[str]:
        """Digests of the repository's manifests that did not come from the parent."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT rm.digest FROM repository_manifests rm JOIN repositories r "
                "ON r.id = rm.repository_id WHERE r.name = ? AND rm.origin != ? "
                "ORDER BY rm.created_at, rm.digest",
                (repository, Origin.PARENT.value),
            )
        ]

    def changed_here(self, repository: str, digest: str | Digest) -> bool:
        """Whether this node changed the manifest itself: stored, or a tag pointed at it, by a
        write that did not come from the parent (a ReadWrite node keeps such a manifest when
        the parent deletes it)."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM repository_manifests rm WHERE rm.repository_id = r.id "
            "AND rm.digest = ? AND rm.origin != ?) OR EXISTS (SELECT 1 FROM tags t "
            "WHERE t.repository_id = r.id AND t.digest = ? AND t.origin != ?) "
            "FROM repositories r WHERE r.name = ?",
            (str(digest), Origin.PARENT.value, str(digest), Origin.PARENT.value, repository),
        ).fetchone()
        return bool(row and row[0])

    def tags_of(self, repository: str, digest: str | Digest) -> list[str]:
        """The tags pointing at `digest` in `repository`, by name."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id "
                "WHERE r.name = ? AND t.digest = ? ORDER BY t.name",
                (repository, str(digest)),
            )
        ]

    def hand_tag_to_parent(self, repository: str, tag: str, digest: str) -> bool:
        """Mark a tag that still points at `digest` as the parent's, so pull sync may move or
        delete it from now on: push sync does this once the parent has the tag at that digest,
        or lost a conflict for it (the parent wins). The digest does not change, so nothing is
        recorded in the change feed or the outbox."""
        return bool(
            self.conn.execute(
                "UPDATE tags SET origin = ? WHERE name = ? AND digest = ? AND origin != ? "
                "AND repository_id = (SELECT id FROM repositories WHERE name = ?)",
                (Origin.PARENT.value, tag, digest, Origin.PARENT.value, repository),
            ).rowcount
        )

    def _record(
        self, repository: str, op: str, tag: str | None, digest: Digest, origin: Origin, now: str
    ) -> None:
        self.conn.execute(
            "INSERT INTO changes (repository, op, tag, digest, origin, time) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (repository, op, tag, str(digest), origin.value, now),
        )
        if origin in (Origin.LOCAL, Origin.CHILD) and self.has_parent:
            self.outbox.append(repository, op, tag, str(digest), now)


def manifest_too_large(size: int) -> OCIError:
    return OCIError(
        ErrorCode.SIZE_INVALID,
        f"manifest is {size} bytes; at most {MAX_MANIFEST_BYTES} are accepted",
        status=413,
    )
