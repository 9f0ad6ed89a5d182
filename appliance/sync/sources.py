"""Where a sync run copies from: this node's parent (on an activated connected registry) and
the config's `[[upstream]]` registries, each as a `Source` with its scope, tag filter,
credentials, trust and schedule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import Config
from appliance.control.parent import parent_of
from appliance.storage.store import Store
from appliance.sync.bandwidth import limiter_for
from appliance.sync.client import RegistryClient
from appliance.sync.content import ScopeError, TagFilter
from appliance.transport import PeerError


class SyncError(Exception):
    """A run that cannot start (bad upstream config): its code and one line; shown as
    `CODE: message`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


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
    # `[sync] bandwidth_limit`, bytes/second (None: unlimited).
    bandwidth_limit: int | None = None
    # A plain upstream's own cron schedule (UTC); None: every run.
    schedule: str | None = None

    def client(self) -> RegistryClient:
        """A client paced by the process's shared bucket for the bandwidth limit."""
        return RegistryClient(
            self.url,
            self.username,
            self.password,
            self.ca_pem,
            limiter=limiter_for(self.bandwidth_limit),
        )


def parent_source(
    store: Store, settings: dict[str, Any], bandwidth_limit: int | None = None
) -> Source:
    """The parent as an upstream, scoped by `settings` (the ones this run fetched or cached),
    its transfers paced by `bandwidth_limit` (bytes/second, the config's)."""
    try:
        parent = parent_of(store)
    except PeerError as err:
        raise SyncError(err.code, err.message) from None
    try:
        tag_filter = TagFilter.of(
            settings.get("tagInclude"), settings.get("tagExclude"), settings.get("tagSemver")
        )
    except ScopeError as err:
        raise SyncError("SETTINGS_INVALID", f"the parent's {err}") from None
    return Source(
        label=f"parent {parent.endpoint}",
        url=parent.url,
        repositories=list(settings.get("repositories") or []),
        tag_filter=tag_filter,
        username=parent.token,
        password=parent.password,
        ca_pem=parent.ca_pem,
        is_parent=True,
        bandwidth_limit=bandwidth_limit,
    )


def upstream_sources(config: Config) -> list[Source]:
    found: list[Source] = []
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
            tag_filter = TagFilter.of(
                upstream.tag_include, upstream.tag_exclude, upstream.tag_semver
            )
        except ScopeError as err:
            raise SyncError("CONFIG_INVALID", f"[[upstream]] {upstream.url}: {err}") from None
        found.append(
            Source(
                label=upstream.url,
                url=upstream.url,
                repositories=list(upstream.repositories),
                tag_filter=tag_filter,
                username=username,
                password=password,
                ca_pem=ca_pem,
                bandwidth_limit=config.bandwidth_limit,
                schedule=upstream.schedule,
            )
        )
    return found


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise SyncError(
            "CONFIG_INVALID", f"cannot read {what} {path}: {err.strerror}"
        ) from None


def _credentials(path: Path) -> tuple[str, str]:
    """`username:password` on the file's first line."""
    lines = _read(path, "credentials file").decode("utf-8", "replace").splitlines()
    username, sep, password = (lines[0] if lines else "").partition(":")
    if not sep or not username:
        raise SyncError("CONFIG_INVALID", f"{path} must hold username:password")
    return username, password
