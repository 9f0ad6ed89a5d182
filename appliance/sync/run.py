"""One sync run: every upstream of this node, one after the other, each by full reconcile.

The upstreams of a node:
- its parent, on an activated connected registry: `parent_protocol://parent_endpoint` with the
  sync token (Bearer through the parent's token endpoint), trusting `tls/parent-ca.crt` when
  activation pinned one, else the system store; scope and tag filters from the settings the
  parent last sent (stored at activation);
- every `[[upstream]]` of the config, on any node (a root, a device, a development registry).

A lock on `<data_dir>/sync.lock` (flock, released by the kernel when the process dies) makes
overlapping runs impossible. After a run that reached the parent the node state records
`connection_state = Online` and `last_sync_time`; a parent that could not be reached records
`Offline`. Both are what `connected-registry status` shows.

Not in this slice: the change feed (every run is a full reconcile), refreshing settings from
the parent and reporting status to it, push sync, schedule and window, the bandwidth limit,
the hand-off to the running service over `control.sock` (runs are in-process).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.config import Config
from appliance.control.node import CONNECTED, NodeState
from appliance.oci.errors import OCIError
from appliance.storage.store import Store
from appliance.sync.client import RegistryClient, RegistryError, UpstreamUnreachable
from appliance.sync.content import ScopeError, TagFilter, repositories_in_scope
from appliance.sync.copy import RepositoryCopy, Transfer

PARENT_UNREACHABLE = "PARENT_UNREACHABLE"


class SyncError(Exception):
    """A run that cannot start (bad upstream config); one line, with a code."""


class AlreadyRunning(Exception):
    pass


@dataclass(frozen=True)
class Source:
    """One upstream to copy from."""

    label: str
    url: str
    repositories: list[str]
    tag_filter: TagFilter
    username: str | None = None
    password: str | None = None
    ca_pem: bytes | None = None
    is_parent: bool = False

    def client(self) -> RegistryClient:
        return RegistryClient(self.url, self.username, self.password, self.ca_pem)


@dataclass
class SourceReport:
    source: str
    transfer: Transfer = field(default_factory=Transfer)
    requests: int = 0
    repositories_checked: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unreachable: bool = False


@dataclass
class SyncReport:
    dry_run: bool
    seconds: float = 0.0
    sources: list[SourceReport] = field(default_factory=list)

    @property
    def total(self) -> Transfer:
        total = Transfer()
        for report in self.sources:
            total.add(report.transfer)
        return total

    @property
    def requests(self) -> int:
        return sum(report.requests for report in self.sources)

    @property
    def errors(self) -> list[str]:
        return [error for report in self.sources for error in report.errors]

    def to_json(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "total": _transfer_json(self.total),
            "sources": [
                {
                    "source": r.source,
                    "repositoriesChecked": r.repositories_checked,
                    "requests": r.requests,
                    **_transfer_json(r.transfer),
                    "warnings": r.warnings,
                    "errors": r.errors,
                }
                for r in self.sources
            ],
        }


def _transfer_json(transfer: Transfer) -> dict[str, Any]:
    fields = asdict(transfer)
    return {
        "repositories": fields["repositories"],
        "manifests": fields["manifests"],
        "blobs": fields["blobs"],
        "bytes": fields["bytes"],
        "blobsMounted": fields["mounted"],
        "tagsMoved": fields["tags_moved"],
        "tagsDeleted": fields["tags_deleted"],
        "tagsKeptLocal": fields["tags_kept"],
    }


# -- the lock --------------------------------------------------------------------------------


@contextmanager
def sync_lock(lock_path: Path) -> Iterator[None]:
    """Held for the whole run; AlreadyRunning if another process holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning() from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


# -- where to sync from ----------------------------------------------------------------------


def sources(store: Store, config: Config) -> list[Source]:
    """The parent (on an activated device) first, then the config's `[[upstream]]`s."""
    node = NodeState(store)
    found: list[Source] = []
    if node.role == CONNECTED:
        endpoint, protocol = node.get("parent_endpoint"), node.get("parent_protocol")
        credential = node.sync_credential()
        if not endpoint or not protocol or credential is None:
            raise SyncError("NOT_ACTIVATED: the parent or the sync token is missing from the state")
        settings = node.settings() or {}
        anchor = store.layout.parent_ca_cert
        try:
            tag_filter = TagFilter.of(settings.get("tagInclude"), settings.get("tagExclude"))
        except ScopeError as err:
            raise SyncError(f"SETTINGS_INVALID: the parent's {err}") from None
        found.append(
            Source(
                label=f"parent {endpoint}",
                url=f"{protocol}://{endpoint}",
                repositories=list(settings.get("repositories") or []),
                tag_filter=tag_filter,
                username=credential.token,
                password=credential.password,
                ca_pem=anchor.read_bytes() if anchor.exists() else None,
                is_parent=True,
            )
        )
    # Relative paths in a config file mean relative to the file, as config.py does for TLS.
    folder = config.source.parent if config.source is not None else Path.cwd()
    for upstream in config.upstreams:
        username = password = None
        if upstream.credentials_file is not None:
            username, password = _credentials(folder / upstream.credentials_file)
        ca_pem = None
        if upstream.ca_file is not None:
            ca_pem = _read(folder / upstream.ca_file, "CA file")
        try:
            tag_filter = TagFilter.of(upstream.tag_include, upstream.tag_exclude)
        except ScopeError as err:
            raise SyncError(f"CONFIG_INVALID: [[upstream]] {upstream.url}: {err}") from None
        found.append(
            Source(
                label=upstream.url,
                url=upstream.url,
                repositories=list(upstream.repositories),
                tag_filter=tag_filter,
                username=username,
                password=password,
                ca_pem=ca_pem,
            )
        )
    return found


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise SyncError(f"CONFIG_INVALID: cannot read {what} {path}: {err.strerror}") from None


def _credentials(path: Path) -> tuple[str, str]:
    """`username:password` on the file's first line."""
    lines = _read(path, "credentials file").decode("utf-8", "replace").splitlines()
    username, sep, password = (lines[0] if lines else "").partition(":")
    if not sep or not username:
        raise SyncError(f"CONFIG_INVALID: {path} must hold username:password")
    return username, password


# -- the run ---------------------------------------------------------------------------------


async def run_sync(store: Store, config: Config, dry_run: bool = False) -> SyncReport:
    """Sync every upstream; failures are in the report (`errors`), never raised, so one
    unreachable upstream does not stop the others."""
    started = time.monotonic()
    report = SyncReport(dry_run)
    node = NodeState(store)
    mode = node.mode
    for source in sources(store, config):
        report.sources.append(await _sync_source(store, source, mode, dry_run))
    report.seconds = time.monotonic() - started
    if not dry_run:
        parent = next((r for r in report.sources if r.source.startswith("parent ")), None)
        if parent is not None:
            node.set("connection_state", "Offline" if parent.unreachable else "Online")
            if not parent.unreachable:
                node.set("last_contact", _now())
        if not report.errors:
            node.set("last_sync_time", _now())
    return report


async def _sync_source(store: Store, source: Source, mode: str, dry_run: bool) -> SourceReport:
    report = SourceReport(source.label)
    client = source.client()
    async with client:
        try:
            scope = await repositories_in_scope(client, source.repositories)
            report.warnings += scope.warnings
            for repository in scope.repositories:
                report.repositories_checked += 1
                copy = RepositoryCopy(
                    client, store, repository, source.tag_filter, mode, dry_run=dry_run
                )
                try:
                    await copy.reconcile()
                except UpstreamUnreachable:
                    report.transfer.add(copy.transfer)
                    raise
                except (RegistryError, OCIError) as err:
                    report.errors.append(f"{_code(err)}: {repository}: {_message(err)}")
                report.transfer.add(copy.transfer)
        except UpstreamUnreachable as err:
            report.unreachable = True
            code = PARENT_UNREACHABLE if source.is_parent else err.code
            report.errors.append(f"{code}: {err.message}")
        except RegistryError as err:
            report.errors.append(f"{err.code}: {err.message}")
    report.requests = client.requests
    return report


def _code(err: RegistryError | OCIError) -> str:
    return err.code if isinstance(err, RegistryError) else err.code.name


def _message(err: RegistryError | OCIError) -> str:
    return err.message


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
