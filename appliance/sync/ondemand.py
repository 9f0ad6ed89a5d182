"""On-demand: a client's pull of in-scope content this device does not have yet is fetched from
the parent in the same request (DESIGN.md §2), so a device is useful before its first sync.

When the parent is asked at all — all of these, else the client gets today's 404 at once:
- the content is missing here: the handlers call in only on a miss, so what the device has is
  served without touching the parent;
- the node is an activated connected registry, and the repository is in the scope of its cached
  settings (a name or a pattern), and a tag passes the settings' tag filter. The access
  middleware has already authorized the client for the repository: on-demand never lets a
  client read more than it could read had the content been synced;
- the sync window of the cached settings is open: windows exist to control traffic;
- the parent did not just fail: after an unreachable parent (a refused connection, none within
  2 s, no response headers within `FIRST_BYTE` s of asking, or a 5xx) no on-demand fetch is
  tried for `PAUSE_AFTER_FAILURE` seconds, so a device cut off from its parent answers from
  what it has without delay.

What happens inside the request, and what after:
- a manifest is fetched (its digest verified: against the reference, or the parent's
  `Docker-Content-Digest` for a tag) and the client gets exactly those bytes. Storing it needs
  its whole tree first (the store refuses a manifest whose blobs are missing) and an image may
  be GiBs, so the tree — index children, blobs, referrers, then the manifest and the tag — is
  completed by a background task that reuses sync's `RepositoryCopy` (Origin.PARENT, the
  store's one write path): one task per manifest, `TREE_SLOTS` at a time, at most `MAX_TREES`
  waiting, logged, cancelled on shutdown. Until it has finished, the manifest is fetched again
  if asked (a small GET); a tag this node moved itself meanwhile (ReadWrite) is kept, as sync
  keeps it. The window's end stops the task between blobs, as it stops a sync run.
- a blob is downloaded into the store (an upload session finished with the expected digest, so
  nothing that fails to verify is ever visible) and then served from disk with sendfile
  (`Range` included). One download per digest: concurrent requests and the background tree
  completion wait for the same one (`_downloads`), and a client that hangs up does not stop
  it. `DOWNLOAD_SLOTS` downloads run at once; all of them take their bytes from the process's
  bandwidth limiter (`[sync] bandwidth_limit`, bandwidth.py; a sync run in its own process has
  its own). A HEAD on a blob is fetched too,
  except on a ReadWrite node: there it is how a pushing client asks whether to upload a layer
  it holds, and a download of it from the parent over the uplink would be the wrong answer.
- the parent sends bytes that do not match the digest, an invalid manifest, or refuses
  otherwise: nothing is stored and the client gets 502 with `MANIFEST_UNKNOWN`/`BLOB_UNKNOWN`
  and a message naming the parent's fault (502: the fault is upstream and a retry may work; the
  code says what the client asked for and did not get). The parent not having it is a 404.

A blob download cut short (the parent lost, the service stopped) keeps its bytes as a partial,
like a sync's: the next on-demand fetch or sync of that digest resumes it with `Range`.

Not here: streaming a blob to the client while it downloads (a client waits for the whole blob,
which for a large layer on a slow link may outlast the client's own timeout: it then retries
and finds the download finished or under way).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiohttp

from appliance.auth.scopes import matches
from appliance.control.node import CONNECTED, NodeState
from appliance.control.roles import READ_ONLY
from appliance.control.schedule import ScheduleError
from appliance.oci.digests import Digest
from appliance.oci.errors import ErrorCode, OCIError
from appliance.oci.manifests import MAX_MANIFEST_BYTES, Descriptor, parse_manifest
from appliance.storage.space import DiskFull
from appliance.storage.store import Store, StoredManifest
from appliance.sync.bandwidth import TokenBucket
from appliance.sync.client import (
    FetchedManifest,
    RegistryClient,
    RegistryError,
    UpstreamUnreachable,
)
from appliance.sync.content import TagFilter
from appliance.sync.copy import PARALLEL_BLOBS, RepositoryCopy
from appliance.sync.download import BlobDownload, WindowClosed
from appliance.sync.schedule import Deadline, Window, utc_now, window_at
from appliance.sync.sources import Source, SyncError, parent_source
from appliance.system.logs import fields

log = logging.getLogger(__name__)

# A client is waiting: a parent that does not accept a connection in 2 s, or has not begun to
# answer FIRST_BYTE seconds after being asked, is taken as down, and one try is all it gets (the
# breaker, not retries, decides when to ask again). A body that stalls for 30 s is cut; one that
# moves is never (a big layer on a slow link may take its time).
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=2, sock_connect=2, sock_read=30)
FIRST_BYTE = 3.0
PAUSE_AFTER_FAILURE = 30.0
DOWNLOAD_SLOTS = PARALLEL_BLOBS
# Trees completed at once, and at most waiting: past that a manifest is served but its tree is
# left to the next sync (a burst of pulls must not queue unbounded work).
TREE_SLOTS = 2
MAX_TREES = 64


@dataclass(frozen=True)
class _Parent:
    """The parent as this miss may use it: the source and the end of the open window."""

    source: Source
    deadline: Deadline


@dataclass
class _Tree:
    """A manifest's tree being completed, and the tags to point at it once it is."""

    tags: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class OnDemand:
    """Fetches what a client asks for and this device lacks; one per server process."""

    def __init__(self, store: Store, limiter: TokenBucket | None = None) -> None:
        self.store = store
        self._limiter = limiter
        # One client (one connection pool, one token cache) per parent and credential.
        self._clients: dict[tuple[str, str | None, str | None, bytes | None], RegistryClient] = {}
        self._paused_until = 0.0  # monotonic: the breaker
        self._downloads: dict[Digest, asyncio.Task[None]] = {}
        self._download_slots = asyncio.Semaphore(DOWNLOAD_SLOTS)
        self._trees: dict[tuple[str, Digest], _Tree] = {}
        self._tree_slots = asyncio.Semaphore(TREE_SLOTS)

    # -- what the handlers call on a miss --------------------------------------------------

    async def manifest(self, repository: str, reference: str | Digest) -> StoredManifest | None:
        """The parent's manifest for `reference`, its tree then stored in the background; None
        when it is not to be fetched now or the parent has none (the client gets 404)."""
        tag = reference if isinstance(reference, str) else None
        parent = self._parent_for(repository, tag)
        if parent is None:
            return None
        what = f"manifest {repository}{':' if tag else '@'}{reference}"
        try:
            client = await self._client(parent.source)
            fetched = await client.get_manifest(repository, reference)
            if fetched is None:
                return None
            _check_manifest(fetched)
        except (RegistryError, OCIError) as err:
            self._failed(err, ErrorCode.MANIFEST_UNKNOWN, what)
            return None
        log.info("on-demand: fetched %s (%s) from the parent", what, fetched.digest)
        self._complete_tree(parent, client, repository, fetched.digest, tag)
        return StoredManifest(str(fetched.digest), fetched.media_type, fetched.body)

    async def blob(self, repository: str, digest: Digest, head: bool = False) -> bool:
        """Whether the blob is now in `repository`, downloaded from the parent; False when it
        is not to be fetched now or the parent has none (the client gets 404). A HEAD on a
        ReadWrite node is not fetched: it is how a pushing client asks whether to upload a
        layer it holds (pulling clients GET blobs), and the answer must not be a download
        from the parent of what the client would send over the site's own network."""
        if head and NodeState(self.store).mode != READ_ONLY:
            return False
        parent = self._parent_for(repository, None)
        if parent is None:
            return False
        try:
            client = await self._client(parent.source)
            await self.fetch_blob(client, repository, digest, None)
        except (RegistryError, OCIError) as err:
            self._failed(err, ErrorCode.BLOB_UNKNOWN, f"blob {repository}@{digest}")
            return False
        return True

    async def close(self) -> None:
        """Cancel every download and tree under way (their sessions are dropped) and close the
        connections to the parent."""
        tasks = [tree.task for tree in self._trees.values() if tree.task is not None]
        tasks += self._downloads.values()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in self._clients.values():
            await client.__aexit__(None, None, None)
        self._clients.clear()

    # -- whether to ask the parent ---------------------------------------------------------

    def _parent_for(self, repository: str, tag: str | None) -> _Parent | None:
        """The parent, if this miss may be fetched from it now (the rules of the docstring)."""
        node = NodeState(self.store)
        if node.role != CONNECTED:
            return None
        settings = node.settings() or {}
        if not any(matches(entry, repository) for entry in settings.get("repositories") or []):
            return None
        try:
            source = parent_source(self.store, settings)
        except SyncError as err:
            log.warning("on-demand: %s", err)
            return None
        if tag is not None and not source.tag_filter(tag):
            return None
        try:
            window = window_at(settings.get("syncSchedule"), settings.get("syncWindow"), utc_now())
        except ScheduleError as err:
            # As a sync run does: a schedule that cannot be read does not stop content.
            log.warning("on-demand: the cached settings' %s; taken as always open", err)
            window = Window(open=True)
        if not window.open:
            return None
        if time.monotonic() < self._paused_until:
            return None
        return _Parent(source, Deadline(window.closes_at))

    def _failed(self, err: RegistryError | OCIError, unknown: ErrorCode, what: str) -> None:
        """A fetch that failed: returns when the client is to get the plain 404 (the parent is
        unreachable — the breaker opens — or has no such content), else raises the 502, or the
        507 of a disk too full to store what the parent sent."""
        if isinstance(err, UpstreamUnreachable):
            self._pause(err)
            return
        if isinstance(err, RegistryError) and err.status == 404:
            return
        if isinstance(err, DiskFull):
            raise err
        log.warning("on-demand: %s: %s", what, err)
        raise OCIError(
            unknown,
            f"the parent could not provide {what}, nothing was stored: {_message(err)}",
            status=502,
        )

    def _pause(self, err: UpstreamUnreachable) -> None:
        if time.monotonic() >= self._paused_until:
            log.warning(
                "on-demand: %s; no on-demand fetch for %.0f s", err.message, PAUSE_AFTER_FAILURE
            )
        self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE

    async def _client(self, source: Source) -> RegistryClient:
        key = (source.url, source.username, source.password, source.ca_pem)
        client = self._clients.get(key)
        if client is None:
            client = RegistryClient(
                *key, tries=1, timeout=TIMEOUT, limiter=self._limiter, first_byte=FIRST_BYTE
            )
            await client.__aenter__()
            self._clients[key] = client
        return client

    # -- blobs: one download per digest ----------------------------------------------------

    async def fetch_blob(
        self, client: RegistryClient, repository: str, digest: Digest, size: int | None
    ) -> None:
        """Get the blob linked into `repository`: a link when it is on disk for another
        repository, else the download of `digest` under way (joined) or a new one. `size`, when
        a descriptor gave it, bounds what the parent may send."""
        if self.store.blob_size(repository, digest) is not None or self._mount(repository, digest):
            return
        task = self._downloads.get(digest)
        if task is None:
            task = asyncio.create_task(self._download(client, repository, digest, size))
            self._downloads[digest] = task
            task.add_done_callback(lambda done: self._download_ended(digest, done))
        # Shielded: a client that hangs up does not stop a download others wait for.
        await asyncio.shield(task)
        if self.store.blob_size(repository, digest) is None and not self._mount(repository, digest):
            raise RegistryError("BLOB_UNKNOWN", f"{digest} was downloaded but is not on disk")

    def _mount(self, repository: str, digest: Digest) -> bool:
        """Link a blob another repository already holds (downloaded for it, perhaps just now)."""
        return any(
            self.store.mount_blob(repository, digest, other)
            for other in self.store.repositories_with_blob(digest)
        )

    def _download_ended(self, digest: Digest, task: asyncio.Task[None]) -> None:
        if self._downloads.get(digest) is task:
            del self._downloads[digest]
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here too: its waiters may all have hung up.
            log.debug("on-demand: download of %s failed: %s", digest, task.exception())

    async def _download(
        self, client: RegistryClient, repository: str, digest: Digest, size: int | None
    ) -> None:
        """The same download a sync's blob takes (download.py): resumed, verified, Origin.PARENT;
        a fetch cut short keeps its bytes for the next one."""
        async with self._download_slots:
            received = await BlobDownload(self.store, client, repository, digest, size).run()
        log.info(
            "on-demand: stored blob %s (%d bytes) in %s",
            digest,
            received,
            repository,
            extra=fields(repository=repository, digest=digest),
        )

    # -- manifests: the tree, in the background --------------------------------------------

    def _complete_tree(
        self,
        parent: _Parent,
        client: RegistryClient,
        repository: str,
        digest: Digest,
        tag: str | None,
    ) -> None:
        key = (repository, digest)
        tree = self._trees.get(key)
        if tree is None:
            if len(self._trees) >= MAX_TREES:
                log.warning(
                    "on-demand: %d manifests already being completed; %s@%s is left to the "
                    "next sync",
                    MAX_TREES,
                    repository,
                    digest,
                )
                return
            tree = self._trees[key] = _Tree()
            tree.task = asyncio.create_task(self._copy_tree(parent, client, key, tree))
        if tag is not None:
            tree.tags.add(tag)

    async def _copy_tree(
        self,
        parent: _Parent,
        client: RegistryClient,
        key: tuple[str, Digest],
        tree: _Tree,
    ) -> None:
        repository, digest = key
        copy = _TreeCopy(
            self,
            client,
            repository,
            parent.source.tag_filter,
            NodeState(self.store).mode,
            parent.deadline,
        )
        try:
            async with self._tree_slots:
                fetched = await copy.copy_target(digest)
                # No await from here on: a tag asked for after this pop finds the manifest
                # stored, and one asked for before it is moved just below.
                del self._trees[key]
                copy.move_tags(sorted(tree.tags), fetched)
            await self.store.flush()
            log.info(
                "on-demand: stored %s@%s%s (%d manifest(s))",
                repository,
                digest,
                f" as {', '.join(sorted(tree.tags))}" if tree.tags else "",
                copy.transfer.manifests,
            )
        except WindowClosed:
            log.info("on-demand: the sync window closed: %s@%s is left to the next sync", *key)
        except UpstreamUnreachable as err:
            self._pause(err)
        except (RegistryError, OCIError) as err:
            log.warning("on-demand: %s@%s not stored: %s", repository, digest, err)
        except Exception:
            log.exception("on-demand: completing %s@%s failed", repository, digest)
        finally:
            if self._trees.get(key) is tree:
                del self._trees[key]


class _TreeCopy(RepositoryCopy):
    """Sync's copy of one manifest tree, its blobs fetched through `OnDemand.fetch_blob` so a
    blob a client waits for is downloaded once, not once for the client and once for the tree.
    (It overrides `RepositoryCopy._copy_blob(descriptor)`: the one seam where a blob is got.)"""

    def __init__(
        self,
        on_demand: OnDemand,
        client: RegistryClient,
        repository: str,
        tag_filter: TagFilter,
        mode: str,
        deadline: Deadline,
    ) -> None:
        super().__init__(client, on_demand.store, repository, tag_filter, mode, deadline=deadline)
        self._on_demand = on_demand

    def move_tags(self, tags: list[str], fetched: FetchedManifest) -> None:
        """Point `tags` at the stored manifest, except a tag this node moved itself since the
        miss (ReadWrite): sync leaves those to push sync, and so does this."""
        for tag in tags:
            if self.store.tag_origin(self.repository, tag) is None or self._may_change(tag):
                self._move_tag(tag, fetched)

    async def _copy_blob(self, descriptor: Descriptor) -> None:
        if self.deadline.passed():
            raise WindowClosed()
        await self._on_demand.fetch_blob(
            self.client, self.repository, descriptor.digest, descriptor.size
        )


def _check_manifest(fetched: FetchedManifest) -> None:
    """A manifest the store will take: not too large, valid for its media type."""
    if len(fetched.body) > MAX_MANIFEST_BYTES:
        raise OCIError(ErrorCode.SIZE_INVALID, f"the manifest is {len(fetched.body)} bytes")
    parse_manifest(fetched.body, fetched.media_type)


def _message(err: RegistryError | OCIError) -> str:
    code = err.code if isinstance(err, RegistryError) else err.code.name
    return f"{code}: {err.message}"
