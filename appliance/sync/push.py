"""Push sync: a ReadWrite device replays its outbox to its parent (PROTOCOL.md §4).

Every write on this node that did not come from the parent left an outbox row in the same
transaction (`Store._record`); content pulled from the parent leaves none, so nothing is ever
echoed back up. One run, before the pull:

1. Rows older than the settings' `messageTtl` are dropped and their repository is marked
   (node_state `push_reconcile/<repo>`) for a full upward reconcile: nothing is lost to a TTL.
2. The rest are replayed oldest first, each removed once applied:
   - manifest 'put': the manifest is pushed by digest, byte-exact with its stored media type,
     after every blob it needs that the parent lacks (HEAD first, then an automatic
     cross-repository mount, then an upload) and, for an index, its children;
   - tag 'put': the conflict check — the parent's current digest (HEAD) against the one this
     node last received from it (`parent_tags/<repo>/<tag>`, written by the pull and by a
     successful push). Unmoved (or absent both times) → the manifest is PUT with the tag.
     Moved → the parent wins: the manifest is on the parent by digest only, the tag is not
     moved there, the local tag is handed to the pull to overwrite, and `TAG_CONFLICT` goes
     into the run's status details;
   - 'delete': the tag (same conflict rule: a tag the parent moved since is not deleted) or the
     manifest by digest is deleted on the parent; 404 means already gone, which is fine.
   A row whose state was overtaken locally (the tag moved again, the manifest deleted) is
   removed without a request: a later row carries the newer state.
3. Marked repositories are reconciled upward: every tag of this node's own (origin not
   'parent') and every manifest of its own is compared with the parent and pushed when it
   differs, by the same rules.

A tag the parent has at our digest (pushed, or found equal) is handed over to the pull
(`Store.hand_tag_to_parent`): from then on the parent's later moves and deletes reach it.

Failures: an unreachable parent stops the push (rows stay for the next run); a refusal of one
row stops that repository's rows only (their order matters), the others go on. Rows for
repositories outside the device's scope are left in place (the parent would refuse them; they
go when the scope widens or their TTL ends).

Not done: pushing with chunked, resumable uploads (one monolithic streamed PUT per blob), and
an upward reconcile of deletions (a tag missing here cannot be told from one never pulled).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from appliance.auth.scopes import matches
from appliance.control.schedule import DEFAULT_TTL, ScheduleError, parse_duration
from appliance.oci.digests import Digest
from appliance.oci.errors import OCIError
from appliance.oci.manifests import Descriptor, parse_manifest, required_blobs
from appliance.storage.outbox import OutboxRow
from appliance.storage.store import Origin, Store
from appliance.storage.timestamps import timestamp
from appliance.sync.client import RegistryClient, RegistryError, UpstreamUnreachable
from appliance.sync.problems import Problem

log = logging.getLogger(__name__)

TAG_CONFLICT = "TAG_CONFLICT"
PUSH_FAILED = "PUSH_FAILED"
# Rows read per run, in pages: a bound, not a target; the rest is replayed at the next run.
PAGE = 500
MAX_ROWS = 20_000
# Index → image nesting is one level in practice; a deeper chain is refused, not followed.
MAX_DEPTH = 8
# Other repositories a mount may come from: enough to find a shared base layer.
MOUNT_SOURCES = 4
PARENT_TAGS = "parent_tags/"
RECONCILE = "push_reconcile/"


def parent_tag_key(repository: str, tag: str) -> str:
    """node_state key: the digest the parent's `tag` had when this node last heard of it."""
    return f"{PARENT_TAGS}{repository}/{tag}"


@dataclass
class PushReport:
    rows: int = 0
    manifests: int = 0
    blobs: int = 0
    bytes: int = 0
    mounted: int = 0
    tags_moved: int = 0
    tags_deleted: int = 0
    manifests_deleted: int = 0
    expired: int = 0
    reconciled: list[str] = field(default_factory=list)
    # Conflicts are reported (the parent won), not failures.
    conflicts: list[Problem] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unreachable: bool = False
    # Repositories the pull must visit this run even if the feed does not name them: the
    # parent won a conflict there, and the local tag is to follow it.
    pull: set[str] = field(default_factory=set)

    @property
    def pushes(self) -> int:
        """Requests that changed the parent."""
        return (
            self.manifests
            + self.blobs
            + self.mounted
            + self.tags_moved
            + self.tags_deleted
            + self.manifests_deleted
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "manifests": self.manifests,
            "blobs": self.blobs,
            "bytes": self.bytes,
            "blobsMounted": self.mounted,
            "tagsMoved": self.tags_moved,
            "tagsDeleted": self.tags_deleted,
            "manifestsDeleted": self.manifests_deleted,
            "expired": self.expired,
            "reconciled": self.reconciled,
            "conflicts": [str(conflict) for conflict in self.conflicts],
        }


def pending(store: Store) -> int:
    """Outbox rows waiting (for a dry run and for status)."""
    return store.outbox.pending()


class Push:
    """One replay of the outbox to the parent through `client` (entered by the caller)."""

    def __init__(
        self,
        store: Store,
        client: RegistryClient,
        scope: list[str],
        message_ttl: str | None,
        now: datetime | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.scope = scope
        self.report = PushReport()
        self.now = now or datetime.now(UTC)
        try:
            self.ttl = parse_duration(message_ttl or DEFAULT_TTL, "message TTL")
        except ScheduleError as err:
            self.report.warnings.append(f"{err}; using {DEFAULT_TTL}")
            self.ttl = parse_duration(DEFAULT_TTL, "message TTL")
        # Known to be on the parent in this run (pushed or found there), per repository.
        self._manifests: set[tuple[str, str]] = set()
        self._blobs: set[tuple[str, str]] = set()

    async def run(self) -> PushReport:
        try:
            self._drop_expired()
            blocked = await self._replay()
            for repository in self._marked():
                if repository in blocked or not self._in_scope(repository):
                    continue
                await self._reconcile(repository)
                self.store.node.delete(RECONCILE + repository)
                self.report.reconciled.append(repository)
        except UpstreamUnreachable as err:
            self.report.unreachable = True
            self.report.errors.append(Problem(err.code, err.message))
        return self.report

    # -- TTL -------------------------------------------------------------------------------

    def _drop_expired(self) -> None:
        with self.store.transaction():
            expired = self.store.outbox.drop_older_than(timestamp(self.now - self.ttl))
            for repository in sorted(set(expired)):
                # The content stays; only the message went: compare the whole repository.
                self.store.node.set(RECONCILE + repository, "1")
        if expired:
            self.report.expired = len(expired)
            log.warning("dropped %d outbox rows older than %s", len(expired), self.ttl)

    def _marked(self) -> list[str]:
        return [key[len(RECONCILE) :] for key in self.store.node.keys(RECONCILE)]

    # -- the replay ------------------------------------------------------------------------

    async def _replay(self) -> set[str]:
        """Apply the rows oldest first; the repositories whose rows stopped on a refusal."""
        blocked: set[str] = set()
        after = 0
        for _ in range(MAX_ROWS // PAGE):
            rows = self.store.outbox.rows(after, PAGE)
            if not rows:
                break
            for row in rows:
                after = row.seq
                if row.repository in blocked or not self._in_scope(row.repository):
                    continue
                try:
                    await self._apply(row)
                except UpstreamUnreachable:
                    raise
                except (RegistryError, OCIError) as err:
                    # The row stays; later rows of its repository wait behind it.
                    blocked.add(row.repository)
                    self.report.errors.append(
                        Problem(PUSH_FAILED, f"{row.repository}: {_code(err)}: {err.message}")
                    )
                    continue
                self.store.outbox.remove(row.seq)
                self.report.rows += 1
        return blocked

    async def _apply(self, row: OutboxRow) -> None:
        repository, digest = row.repository, Digest.parse(row.digest)
        if row.tag is None:
            # The manifest itself; skipped when a later write here overtook the row.
            present = self.store.manifest(repository, digest) is not None
            if row.op == "put" and present:
                await self._push_manifest(repository, digest)
            elif row.op == "delete" and not present:
                if await self.client.delete_manifest(repository, digest):
                    self.report.manifests_deleted += 1
                self._manifests.discard((repository, row.digest))
            return
        local = self.store.manifest(repository, row.tag)
        if row.op == "put":
            # Only a tag still where the row put it and still ours: else a later row (or the
            # parent, after a conflict) decides.
            ours = self.store.tag_origin(repository, row.tag) is not Origin.PARENT
            if local is not None and local.digest == row.digest and ours:
                await self._push_tag(repository, row.tag, digest)
        elif row.op == "delete" and local is None:
            await self._delete_tag(repository, row.tag, row.digest)

    # -- tags ------------------------------------------------------------------------------

    async def _push_tag(self, repository: str, tag: str, digest: Digest) -> None:
        """Move the parent's tag to `digest` unless the parent moved it since we last heard."""
        await self._push_manifest(repository, digest)
        now = await self.client.head_manifest(repository, tag)
        key = parent_tag_key(repository, tag)
        last = self.store.node.get(key)
        if now == digest:
            self._handed(repository, tag, str(digest))
            return
        if (None if now is None else str(now)) != last:
            self._conflict(repository, tag, str(digest), now)
            return
        manifest = self.store.manifest(repository, digest)
        if manifest is None:
            return  # deleted here meanwhile: its delete row follows
        await self.client.put_manifest(repository, tag, manifest.content, manifest.media_type)
        self.report.tags_moved += 1
        self._handed(repository, tag, str(digest))

    def _handed(self, repository: str, tag: str, digest: str) -> None:
        """The parent's tag is at our digest: remember it, and let the pull follow it now."""
        with self.store.transaction():
            self.store.node.set(parent_tag_key(repository, tag), digest)
            self.store.hand_tag_to_parent(repository, tag, digest)

    def _conflict(self, repository: str, tag: str, ours: str, theirs: Digest | None) -> None:
        """The parent wins: our manifest stays there by digest, the pull overwrites our tag."""
        parent = str(theirs) if theirs is not None else "deleted"
        self.report.conflicts.append(
            Problem(
                TAG_CONFLICT,
                f"{repository}:{tag} was moved on the parent ({parent}) and here ({ours}); "
                f"the parent's tag wins, {repository}@{ours} is on the parent by digest",
            )
        )
        self.store.hand_tag_to_parent(repository, tag, ours)
        self.report.pull.add(repository)

    async def _delete_tag(self, repository: str, tag: str, digest: str) -> None:
        now = await self.client.head_manifest(repository, tag)
        key = parent_tag_key(repository, tag)
        if now is None:
            self.store.node.delete(key)
            return
        if str(now) not in (digest, self.store.node.get(key)):
            # The parent moved the tag since: its move wins over our delete.
            self.report.conflicts.append(
                Problem(
                    TAG_CONFLICT,
                    f"{repository}:{tag} was deleted here and moved on the parent ({now}); "
                    "the parent's tag wins",
                )
            )
            self.report.pull.add(repository)
            return
        if await self.client.delete_manifest(repository, tag):
            self.report.tags_deleted += 1
        self.store.node.delete(key)

    # -- manifests and blobs ---------------------------------------------------------------

    async def _push_manifest(self, repository: str, digest: Digest, depth: int = 0) -> None:
        """Make the parent hold the manifest by digest, with everything it references."""
        if (repository, str(digest)) in self._manifests:
            return
        if depth > MAX_DEPTH:
            raise RegistryError("MANIFEST_INVALID", f"{repository}@{digest}: indexes nest too deep")
        manifest = self.store.manifest(repository, digest)
        if manifest is None:
            raise RegistryError(
                "MANIFEST_UNKNOWN", f"{repository}@{digest} is referenced but not stored here"
            )
        if await self.client.head_manifest(repository, str(digest)) is None:
            parsed = parse_manifest(manifest.content, manifest.media_type)
            # Bottom-up, as a client pushes: the parent checks references on PUT.
            for child in parsed.manifests:
                await self._push_manifest(repository, child.digest, depth + 1)
            for blob in _unique(required_blobs(parsed)):
                await self._push_blob(repository, blob)
            await self.client.put_manifest(
                repository, digest, manifest.content, manifest.media_type
            )
            self.report.manifests += 1
        self._manifests.add((repository, str(digest)))

    async def _push_blob(self, repository: str, descriptor: Descriptor) -> None:
        digest = descriptor.digest
        if (repository, str(digest)) in self._blobs:
            return
        if not await self.client.has_blob(repository, digest):
            # Repositories of ours holding the blob are likely on the parent too; asking for
            # read access to them lets the parent's automatic mount find it there.
            others = tuple(
                other
                for other in self.store.repositories_with_blob(digest)
                if other != repository and self._in_scope(other)
            )[:MOUNT_SOURCES]
            session = await self.client.mount_blob(repository, digest, others)
            if session is None:
                self.report.mounted += 1
            else:
                path = self.store.blob_path(digest)
                if not path.exists():
                    raise RegistryError("BLOB_UNKNOWN", f"{digest} is not on this node's disk")
                self.report.bytes += await self.client.upload_blob(
                    repository, digest, path, session
                )
                self.report.blobs += 1
        self._blobs.add((repository, str(digest)))

    # -- the upward reconcile --------------------------------------------------------------

    async def _reconcile(self, repository: str) -> None:
        """Push every manifest and tag of this node's own in `repository` the parent lacks."""
        if self.store.repository_id(repository) is None:
            return
        for manifest in self.store.local_manifests(repository):
            await self._push_manifest(repository, Digest.parse(manifest))
        tags, _ = self.store.tags(repository, None, None)
        for tag in tags:
            if self.store.tag_origin(repository, tag) is Origin.PARENT:
                continue
            local = self.store.manifest(repository, tag)
            if local is not None:
                await self._push_tag(repository, tag, Digest.parse(local.digest))

    def _in_scope(self, repository: str) -> bool:
        return any(
            entry == repository or ("*" in entry and matches(entry, repository))
            for entry in self.scope
        )


def _unique(descriptors: list[Descriptor]) -> list[Descriptor]:
    seen: dict[Digest, Descriptor] = {}
    for d in descriptors:
        seen.setdefault(d.digest, d)
    return list(seen.values())


def _code(err: RegistryError | OCIError) -> str:
    return err.code if isinstance(err, RegistryError) else err.code.name
