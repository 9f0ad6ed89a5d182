"""How one repository is copied from an upstream: a full reconcile.

For every upstream tag in the filter whose digest differs from the local one: the manifest tree
is copied bottom-up — an index's children first, an image's blobs before the image — then the
referrers of every manifest copied (signatures, SBOMs), and only then is the tag moved, so a
tag never points at incomplete content and an image's signatures are there when its tag appears.
Everything goes through the store's one write path with `Origin.PARENT`: blobs through an upload
session finished with the expected digest (a lying upstream is refused there, nothing stored),
manifests byte-exact with their expected digest.

Tags the upstream no longer has (within the filter) are deleted locally: always on a ReadOnly
node, on a ReadWrite node only if the parent put them there (a tag moved on this node is the
node's own, for push sync to carry upward). For the same reason a ReadWrite node keeps a tag it
moved itself when the upstream's differs (the conflict rule of PROTOCOL.md §4 is push sync's:
push.py hands a tag to the parent, origin 'parent', once the parent has it or won a conflict).
Every tag moved here from the parent also records the parent's digest in node_state
(`parent_tags/<repo>/<tag>`), which push sync compares with the parent's current one.

Blob downloads (download.py) survive the run: a download that fails (the upstream unreachable
after the client's retries, the window closing, the process killed) keeps its upload session,
which records the digest (`Uploads.download`), and the next download of that blob, in any
repository, resumes from the file's length with `Range`. An upstream that ignores `Range` gets
the blob fetched again from zero; bytes that do not hash to the digest are dropped, never
stored; a partial nobody resumes is purged after 24 h idle like any upload session. The report
counts the bytes received in this run (`bytes`) apart from those of stored blobs that an
earlier run had already fetched (`resumed_bytes`).

A run has a deadline, the end of its sync window: it is checked before each tag, manifest and
blob and for each chunk of a blob, so a run past its window stops there (`WindowClosed`): a
blob under way keeps its partial for the next window, and a manifest whose blobs did not all
arrive is not stored. What was copied stays.

Tags are checked PARALLEL_TAGS at a time (the HEAD, then the copy when the digest differs): a
reconcile is mostly one HEAD per tag, each a round trip, and several in flight hide it. What
tags share is copied once per reconcile, every tag that needs it waiting for that one copy: a
manifest, a blob (the blob downloads of the whole repository still PARALLEL_BLOBS at a time), and
a tag's target with its referrers (asked once per digest, not once per tag). A tag is moved once
its own content is complete; the tags ready are moved together, one transaction (one fsync)
for up to TAG_BATCH of them, committed as soon as the first has waited TAG_BATCH_WAIT, and at
the end. The first error, in tag order, stops new tags from starting; the tags under way finish
(and move, if complete), then it is the repository's error, as if the tags had gone one by one.

A full reconcile compares tags: a referrer attached later to an image whose tags did not move
is found only through the change feed (`copy_untagged`, from our own parent), not from a plain
upstream. Repositories that left the scope are removed by run.py.
"""

from __future__ import annotations

import asyncio
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from appliance.control.roles import READ_ONLY
from appliance.oci.digests import Digest
from appliance.oci.errors import OCIError
from appliance.oci.manifests import Descriptor, parse_manifest, required_blobs
from appliance.storage.deletion import kept_because
from appliance.storage.store import Origin, Store
from appliance.sync.client import FetchedManifest, RegistryClient, RegistryError
from appliance.sync.content import TagFilter
from appliance.sync.download import BlobDownload, WindowClosed
from appliance.sync.progress import current_progress
from appliance.sync.push import parent_tag_key
from appliance.sync.schedule import NO_DEADLINE, Deadline

# Blobs of one image fetched at once: enough to fill a link whose single streams are
# latency-bound, few enough not to thrash a small device's disk.
PARALLEL_BLOBS = 4
# Tags checked at once: an idle reconcile is one HEAD per tag, each a round trip; a few in
# flight hide them without flooding a parent that serves many devices.
PARALLEL_TAGS = 8
# Tag moves in one transaction at most, and how long (seconds) a tag whose content is complete
# waits for others to share its commit: one fsync per batch instead of one per tag.
TAG_BATCH = 256
TAG_BATCH_WAIT = 1.0

T = TypeVar("T")


@dataclass
class Transfer:
    """What moved (or, in a dry run, would move)."""

    repositories: int = 0
    manifests: int = 0
    blobs: int = 0
    # Received from the upstream in this run, stored or kept as a partial.
    bytes: int = 0
    # Of the blobs stored in this run, the bytes an earlier run had already fetched.
    resumed_bytes: int = 0
    mounted: int = 0
    tags_moved: int = 0
    tags_deleted: int = 0
    tags_kept: list[str] = field(default_factory=list)
    # Manifests deleted by digest upstream and so here.
    manifests_deleted: int = 0

    def add(self, other: Transfer) -> None:
        self.repositories += other.repositories
        self.manifests += other.manifests
        self.blobs += other.blobs
        self.bytes += other.bytes
        self.resumed_bytes += other.resumed_bytes
        self.mounted += other.mounted
        self.tags_moved += other.tags_moved
        self.tags_deleted += other.tags_deleted
        self.tags_kept += other.tags_kept
        self.manifests_deleted += other.manifests_deleted


class RepositoryCopy:
    """One full reconcile of `repository` from `client` into `store`."""

    def __init__(
        self,
        client: RegistryClient,
        store: Store,
        repository: str,
        tag_filter: TagFilter,
        mode: str,
        dry_run: bool = False,
        deadline: Deadline = NO_DEADLINE,
    ) -> None:
        self.client = client
        self.deadline = deadline
        # Set by a blob that found the window closed, before it started or mid-way: the
        # manifest that needed it is then not stored (it would be incomplete) and the run stops.
        self._stopped = False
        self.store = store
        self.repository = repository
        self.tag_filter = tag_filter
        self.read_only = mode == READ_ONLY
        self.dry_run = dry_run
        self.transfer = Transfer()
        # The one copy of each manifest, blob and tag target in this run (or, dry, its count):
        # an index's children, referrers and tags often repeat, and may be wanted at once.
        self._manifests: dict[Digest, asyncio.Task[FetchedManifest]] = {}
        self._blobs: dict[Digest, asyncio.Task[None]] = {}
        self._targets: dict[Digest, asyncio.Task[FetchedManifest]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._blob_slots = asyncio.Semaphore(PARALLEL_BLOBS)
        # Manifests whose tags this reconcile removed: candidates for a delete by digest.
        self._untagged_here: list[Digest] = []

    async def reconcile(self) -> Transfer:
        name = self.repository
        upstream_tags = sorted(t for t in await self.client.list_tags(name) if self.tag_filter(t))
        try:
            await self._sync_tags(upstream_tags)
        finally:
            await self._end_tasks()
            self.transfer.tags_kept.sort()
        self._delete_tags_gone_upstream(set(upstream_tags))
        if self.transfer.manifests or self.transfer.tags_moved or self.transfer.tags_deleted:
            self.transfer.repositories = 1
        return self.transfer

    async def copy_untagged(self, digests: list[str]) -> None:
        """Manifests put upstream by digest alone (the change feed names them): a signature or
        SBOM attached later to an image already here, an untagged push. Each is copied with its
        tree and its own referrers; one already here costs nothing, one gone again upstream is
        skipped."""
        try:
            for text in digests:
                try:
                    digest = Digest.parse(text)
                except OCIError:
                    continue
                if self.store.manifest(self.repository, digest) is not None:
                    continue
                self._check_deadline()
                try:
                    await self._once(self._targets, digest, lambda d=digest: self.copy_target(d))
                except RegistryError as err:
                    if err.code != "MANIFEST_UNKNOWN":
                        raise
        finally:
            await self._end_tasks()

    def delete_gone_upstream(self, digests: list[str]) -> None:
        """Delete the manifests the upstream deleted by digest (the change feed names them), with
        `Origin.PARENT`: into this node's own feed, so its children follow, never into the
        outbox. A ReadWrite node keeps one it changed itself (pushed or tagged here) or that
        maintenance must keep (`kept_because`): push sync carries it back up."""
        gone: list[Digest] = []
        for text in digests:
            try:
                digest = Digest.parse(text)
            except OCIError:
                continue
            if self._may_delete(digest):
                gone.append(digest)
        self._delete_manifests(gone)

    async def delete_untagged_gone_upstream(self) -> None:
        """A source without a change feed (a plain upstream, or a parent read in full) says
        nothing of deletes by digest: each manifest whose last tag this reconcile removed is
        asked for by digest, and deleted here if the upstream no longer has it. One HEAD per
        such manifest, none on a run where no tag went."""
        gone: list[Digest] = []
        for digest in self._untagged_here:
            if not self._may_delete(digest) or self.store.tags_of(self.repository, digest):
                continue
            self._check_deadline()
            if await self.client.head_manifest(self.repository, str(digest)) is None:
                gone.append(digest)
        self._delete_manifests(gone)

    def _may_delete(self, digest: Digest) -> bool:
        if self.store.manifest(self.repository, digest) is None:
            return False
        return self.read_only or not (
            self.store.changed_here(self.repository, digest)
            or kept_because(self.store, self.repository, digest) is not None
        )

    def _delete_manifests(self, gone: list[Digest]) -> None:
        if gone and not self.dry_run:
            with self.store.transaction():
                for digest in gone:
                    for tag in self.store.tags_of(self.repository, digest):
                        self.store.node.delete(parent_tag_key(self.repository, tag))
                    self.store.delete_manifest(self.repository, digest, origin=Origin.PARENT)
        self.transfer.manifests_deleted += len(gone)
        if gone:
            self.transfer.repositories = 1

    def _check_deadline(self) -> None:
        if self._stopped or self.deadline.passed():
            self._stopped = True
            raise WindowClosed()

    def _may_change(self, tag: str) -> bool:
        return self.read_only or self.store.tag_origin(self.repository, tag) is Origin.PARENT

    # -- tags, concurrently ----------------------------------------------------------------

    async def _sync_tags(self, tags: list[str]) -> None:
        """Check `tags` PARALLEL_TAGS at a time and move, in batches, those whose content is
        complete. The first error (in tag order) stops new tags from starting; it is raised once
        those under way have finished and the ready ones moved."""
        loop = asyncio.get_running_loop()
        waiting = iter(tags)
        running: dict[asyncio.Task[FetchedManifest | None], str] = {}
        ready: list[tuple[str, FetchedManifest]] = []
        first_ready = 0.0
        failed: list[tuple[str, BaseException]] = []
        while True:
            while not failed and len(running) < PARALLEL_TAGS:
                tag = next(waiting, None)
                if tag is None:
                    break
                try:
                    self._check_deadline()
                except WindowClosed as err:
                    failed.append((tag, err))
                    break
                running[self._start(self._check_tag(tag))] = tag
            if not running:
                break
            timeout = max(0.0, first_ready + TAG_BATCH_WAIT - loop.time()) if ready else None
            done, _ = await asyncio.wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
            for task in done:
                tag = running.pop(task)
                try:
                    target = task.result()
                except Exception as err:
                    failed.append((tag, err))
                    continue
                if target is not None:
                    if not ready:
                        first_ready = loop.time()
                    ready.append((tag, target))
            if len(ready) >= TAG_BATCH or (ready and loop.time() >= first_ready + TAG_BATCH_WAIT):
                failed += await self._commit_moves(ready)
                ready = []
        failed += await self._commit_moves(ready)
        if failed:
            raise min(failed, key=lambda failure: failure[0])[1]

    async def _check_tag(self, tag: str) -> FetchedManifest | None:
        """The manifest `tag` is to point at, its content now complete here; None when the tag
        stays as it is (unchanged, deleted upstream since the list, or this node's own)."""
        digest = await self.client.head_manifest(self.repository, tag)
        if digest is None:
            return None  # deleted between the list and the HEAD
        local = self.store.manifest(self.repository, tag)
        if local is not None and local.digest == str(digest):
            return None
        if local is not None and not self._may_change(tag):
            self.transfer.tags_kept.append(f"{self.repository}:{tag}")
            return None
        return await self._once(self._targets, digest, lambda: self.copy_target(digest))

    async def copy_target(self, digest: Digest) -> FetchedManifest:
        """A tag's target: its tree, then the referrers of all of it (on-demand uses it too)."""
        fetched = await self._copy_manifest(digest)
        await self._copy_referrers(digest)
        return fetched

    async def _commit_moves(
        self, moves: list[tuple[str, FetchedManifest]]
    ) -> list[tuple[str, BaseException]]:
        """Move the tags in one transaction, durable when this returns; the store's refusals.
        A tag the store refuses is moved alone, so it holds back none of the others."""
        if not moves:
            return []
        moves = sorted(moves, key=lambda move: move[0])
        refused: list[tuple[str, BaseException]] = []
        try:
            self._move_tags(moves)
        except OCIError:
            for move in moves:
                try:
                    self._move_tags([move])
                except OCIError as err:
                    refused.append((move[0], err))
        await self.store.flush()
        return refused

    def _start(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work)
        # Held until done (the loop keeps only weak references), then let go.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _once(
        self,
        table: dict[Digest, asyncio.Task[T]],
        digest: Digest,
        copy: Callable[[], Coroutine[Any, Any, T]],
    ) -> asyncio.Task[T]:
        """`copy()` run once per digest in this reconcile; every caller awaits that one task.
        (Not shielded: cancelling a caller, only ever done to end the whole reconcile, cancels
        the copy under it too.)"""
        task = table.get(digest)
        if task is None:
            task = table[digest] = self._start(copy())
        return task

    async def _end_tasks(self) -> None:
        """Nothing of this reconcile goes on after it: what an error or a cancellation left
        running is cancelled, and waited for (a blob's partial is then kept, as at a stop)."""
        left = list(self._tasks)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    # -- manifests -------------------------------------------------------------------------

    async def _copy_manifest(self, digest: Digest) -> FetchedManifest:
        """Copy the manifest and everything it references; its bytes, as stored."""
        return await self._once(self._manifests, digest, lambda: self._fetch_manifest(digest))

    async def _fetch_manifest(self, digest: Digest) -> FetchedManifest:
        local = self.store.manifest(self.repository, digest)
        if local is not None:
            return FetchedManifest(local.content, local.media_type, digest)
        self._check_deadline()
        fetched = await self.client.get_manifest(self.repository, digest)
        if fetched is None:
            raise RegistryError(
                "MANIFEST_UNKNOWN",
                f"{self.client.endpoint} lists {self.repository}@{digest} but does not serve it",
            )
        parsed = parse_manifest(fetched.body, fetched.media_type)
        # Every child and blob ends (stored, stopped or failed) before the manifest's fate is
        # decided: a failure does not leave the others running on past the run.
        outcomes = await asyncio.gather(
            *(self._copy_manifest(child.digest) for child in _unique(parsed.manifests)),
            *(self._blob(d) for d in _unique(required_blobs(parsed))),
            return_exceptions=True,
        )
        if self._stopped:
            raise WindowClosed()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        if not self.dry_run:
            self.store.put_manifest(
                self.repository,
                fetched.body,
                fetched.media_type,
                [],
                expected=digest,
                origin=Origin.PARENT,
            )
            await self.store.flush()
        self.transfer.manifests += 1
        current_progress().manifest_copied()
        return fetched

    async def _copy_referrers(self, subject: Digest) -> None:
        """Referrers of `subject` and of its index children, each copied with its own tree."""
        pending, seen = [subject], set()
        while pending:
            digest = pending.pop()
            if digest in seen:
                continue
            seen.add(digest)
            local = self.store.manifest(self.repository, digest)
            if local is not None:
                pending += [
                    d.digest for d in parse_manifest(local.content, local.media_type).manifests
                ]
            for descriptor in await self.client.referrers(self.repository, digest):
                try:
                    referrer = Digest.parse(descriptor["digest"])
                except OCIError:
                    continue
                await self._copy_manifest(referrer)
                pending.append(referrer)  # signatures of signatures

    # -- blobs -----------------------------------------------------------------------------

    async def _blob(self, descriptor: Descriptor) -> None:
        await self._once(self._blobs, descriptor.digest, lambda: self._copy_blob(descriptor))

    async def _copy_blob(self, descriptor: Descriptor) -> None:
        digest = descriptor.digest
        if self.store.blob_size(self.repository, digest) is not None:
            return
        # Already on disk for another repository: a link, not a download.
        for other in self.store.repositories_with_blob(digest):
            if self.dry_run or self.store.mount_blob(self.repository, digest, other):
                self.transfer.mounted += 1
                return
        if self.dry_run:
            on_disk = min(self.store.uploads.partial_size(digest), descriptor.size)
            self.transfer.blobs += 1
            self.transfer.bytes += descriptor.size - on_disk
            self.transfer.resumed_bytes += on_disk
            return
        async with self._blob_slots:
            # Checked once a slot is free, so no new blob starts after the window closed.
            if self._stopped or self.deadline.passed():
                self._stopped = True
                return
            download = BlobDownload(
                self.store, self.client, self.repository, digest, descriptor.size, self.deadline
            )
            try:
                await download.run()
            except WindowClosed:
                self._stopped = True
                raise
            finally:
                self.transfer.bytes += download.received
        self.transfer.blobs += 1
        self.transfer.resumed_bytes += download.resumed
        current_progress().blob_copied()

    # -- tags ------------------------------------------------------------------------------

    def _move_tag(self, tag: str, fetched: FetchedManifest) -> None:
        self._move_tags([(tag, fetched)])

    def _move_tags(self, moves: list[tuple[str, FetchedManifest]]) -> None:
        """Point each tag at its manifest (stored, with its tree), all in one transaction."""
        if not self.dry_run:
            with self.store.transaction():
                for tag, fetched in moves:
                    self.store.put_manifest(
                        self.repository,
                        fetched.body,
                        fetched.media_type,
                        [tag],
                        expected=fetched.digest,
                        origin=Origin.PARENT,
                    )
                    # What the parent's tag was when we last heard: push sync's conflict check.
                    self.store.node.set(parent_tag_key(self.repository, tag), str(fetched.digest))
        self.transfer.tags_moved += len(moves)

    def _delete_tags_gone_upstream(self, upstream: set[str]) -> None:
        if self.store.repository_id(self.repository) is None:
            return
        local, _ = self.store.tags(self.repository, None, None)
        gone = [
            tag
            for tag in local
            if tag not in upstream and self.tag_filter(tag) and self._may_change(tag)
        ]
        for tag in gone:
            stored = self.store.manifest(self.repository, tag)
            if stored is not None and Digest.parse(stored.digest) not in self._untagged_here:
                self._untagged_here.append(Digest.parse(stored.digest))
        if gone and not self.dry_run:
            # One transaction (one fsync) for them all.
            with self.store.transaction():
                for tag in gone:
                    self.store.delete_tag(self.repository, tag, origin=Origin.PARENT)
                    self.store.node.delete(parent_tag_key(self.repository, tag))
        self.transfer.tags_deleted += len(gone)


def _unique(descriptors: list[Descriptor]) -> list[Descriptor]:
    seen: dict[Digest, Descriptor] = {}
    for d in descriptors:
        seen.setdefault(d.digest, d)
    return list(seen.values())
