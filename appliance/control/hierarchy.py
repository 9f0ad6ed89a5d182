"""Connected-registry resources on a root, and the rules of the hierarchy (kept by
`storage/hierarchy.py`; repository coverage is `control/coverage.py`'s).

A resource is what `az acr connected-registry` manages: a name unique in the hierarchy, a mode,
a parent (none: the root itself), the repositories it replicates, its schedule, window, message
TTL, log level and client tokens, plus what its instance last reported. Creating one creates
its sync token and scope map (named like the resource, as ACR does): repository actions for its
mode and gateway actions for itself; every ancestor's sync token gains the same, so a parent can
relay for its descendants.

Rules, each refused with a one-line `HierarchyError`: names of 5-50 letters and digits starting
with a letter; a ReadOnly parent only has ReadOnly children (the root counts as ReadWrite); a
child's repositories are covered by its parent's; mode and parent never change; a schedule other
than the continuous default needs a window; limits on client tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from appliance.auth.scopes import (
    ACTIONS,
    CONTENT_READ,
    GATEWAY_ACTIONS,
    METADATA_READ,
    GatewayPermission,
    PatternError,
    Permission,
    validate_pattern,
)
from appliance.auth.tokens import CredentialError, Credentials, NotFound
from appliance.control.coverage import repositories_covered
from appliance.control.roles import MODES, READ_ONLY, READ_WRITE
from appliance.control.schedule import (
    CONTINUOUS,
    DEFAULT_TTL,
    ScheduleError,
    interval,
    parse_duration,
    validate_schedule,
    validate_ttl,
)
from appliance.control.semver import SemverError, parse_range
from appliance.storage.hierarchy import ConnectedRegistries, ConnectedRegistry, Report
from appliance.storage.store import Store
from appliance.storage.timestamps import timestamp, utc_now

LOG_LEVELS = ("Debug", "Information", "Warning", "Error", "None")
ACTIVE, INACTIVE = "Active", "Inactive"
ONLINE, OFFLINE, SYNCING, UNHEALTHY = "Online", "Offline", "Syncing", "Unhealthy"
# The status-detail type of a tag both sides moved (PROTOCOL.md §4): informational.
CONFLICT_DETAIL = "SyncConflict"
NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9]{4,49}")
REPOSITORY_ACTIONS = {
    READ_ONLY: frozenset({CONTENT_READ, METADATA_READ}),
    READ_WRITE: frozenset(ACTIONS),
}
MIN_OFFLINE_AFTER = timedelta(minutes=10)
ALREADY_ACTIVATED_MESSAGE = (
    "Failed to activate the connected registry as it is already activated by another "
    "instance. Only one instance is supported at any time."
)


INVALID = "INVALID"


class HierarchyError(Exception):
    """A refused operation. `code`/`status` are what the gateway and management APIs answer;
    the arguments in `OCIError`'s order."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def not_found(name: str) -> HierarchyError:
    return HierarchyError("NAME_UNKNOWN", f"connected registry {name!r} not found", 404)


def connection_state(cr: ConnectedRegistry, now: datetime, offline_after: timedelta | None) -> str:
    """Offline until an instance is active and has been heard from recently; then Unhealthy if
    its last report carried errors, Syncing while it says it syncs, else Online (PROTOCOL.md
    §6). A tag conflict (`SyncConflict`) is reported, not an error: the parent won by rule and
    nothing failed, so it alone does not make a device Unhealthy."""
    if cr.activation_status != ACTIVE or cr.last_activity_time is None:
        return OFFLINE
    limit = offline_after or max(MIN_OFFLINE_AFTER, 2 * interval(cr.sync_schedule, now))
    if now - datetime.fromisoformat(cr.last_activity_time) > limit:
        return OFFLINE
    if any(detail.get("type") != CONFLICT_DETAIL for detail in cr.status_details):
        return UNHEALTHY
    if cr.reported_state == SYNCING:
        return SYNCING
    return ONLINE


def registry_json(
    cr: ConnectedRegistry, now: datetime, offline_after: timedelta | None
) -> dict[str, Any]:
    return {
        "name": cr.name,
        "mode": cr.mode,
        "parent": cr.parent,
        "repositories": list(cr.repositories),
        "tagInclude": cr.tag_include,
        "tagExclude": cr.tag_exclude,
        "tagSemver": cr.tag_semver,
        "clientTokens": list(cr.client_tokens),
        "syncSchedule": cr.sync_schedule,
        "syncWindow": cr.sync_window,
        "messageTtl": cr.message_ttl,
        "logLevel": cr.log_level,
        "syncToken": cr.sync_token,
        "activationStatus": cr.activation_status,
        "connectionState": connection_state(cr, now, offline_after),
        "lastActivityTime": cr.last_activity_time,
        "lastSyncTime": cr.last_sync_time,
        "version": cr.version,
        "loginServer": cr.login_server,
        "tls": cr.tls,
        "statusDetails": list(cr.status_details),
        "resyncRequested": cr.resync_requested,
        "creationDate": cr.created_at,
        "updatedDate": cr.updated_at,
    }


def _filter_update(given: str | None, current: str | None) -> str | None:
    """A tag filter after an update: unchanged when not given, removed when given as ""."""
    if given is None:
        return current
    return given or None


class Hierarchy:
    """The connected registries below this root, kept in its database."""

    def __init__(
        self,
        store: Store,
        credentials: Credentials,
        max_client_tokens: int = 20,
        offline_after: timedelta | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.records = ConnectedRegistries(store.db)
        self.credentials = credentials
        self.max_client_tokens = max_client_tokens
        self.offline_after = offline_after
        # What contact is stamped with and connection states are judged at; a test moves it.
        self.clock = clock

    # -- reading -------------------------------------------------------------------------------

    def get(self, name: str) -> ConnectedRegistry:
        cr = self.records.get(name)
        if cr is None:
            raise not_found(name)
        return cr

    def all(self) -> list[ConnectedRegistry]:
        return self.records.all()

    def children(self, name: str | None) -> list[ConnectedRegistry]:
        return [cr for cr in self.all() if cr.parent == name]

    def descendants(self, name: str | None) -> list[ConnectedRegistry]:
        found: list[ConnectedRegistry] = []
        for child in self.children(name):
            found.append(child)
            found += self.descendants(child.name)
        return found

    def ancestors(self, name: str) -> list[ConnectedRegistry]:
        """Parent first, up to (not including) the root."""
        chain: list[ConnectedRegistry] = []
        parent = self.get(name).parent
        while parent is not None:
            node = self.get(parent)
            chain.append(node)
            parent = node.parent
        return chain

    def list(self, parent: str | None = None, no_children: bool = False) -> list[ConnectedRegistry]:
        """ACR's `list`: everything, or under `parent` (all descendants, or with `no_children`
        just the immediate ones; `no_children` without a parent: the root's children)."""
        if parent is not None:
            self.get(parent)
        if no_children:
            return self.children(parent)
        return self.descendants(parent) if parent is not None else self.all()

    def to_json(self, cr: ConnectedRegistry) -> dict[str, Any]:
        return registry_json(cr, self.clock(), self.offline_after)

    # -- creating and changing -----------------------------------------------------------------

    def create(
        self,
        name: str,
        repositories: list[str],
        mode: str = READ_WRITE,
        parent: str | None = None,
        client_tokens: list[str] | None = None,
        sync_schedule: str = CONTINUOUS,
        sync_window: str | None = None,
        message_ttl: str = DEFAULT_TTL,
        log_level: str = "Information",
        tag_include: str | None = None,
        tag_exclude: str | None = None,
        tag_semver: str | None = None,
    ) -> ConnectedRegistry:
        if not NAME.fullmatch(name):
            raise HierarchyError(
                INVALID,
                f"connected registry name {name!r} must be 5-50 letters and digits, starting "
                "with a letter"
            )
        if mode not in MODES:
            raise HierarchyError(INVALID, f"mode must be ReadWrite or ReadOnly, not {mode!r}")
        repos = self._repositories(repositories)
        tokens = self._client_tokens(client_tokens or [])
        self._settings(sync_schedule, sync_window, message_ttl, log_level)
        tag_include, tag_exclude = tag_include or None, tag_exclude or None
        self._tag_filters(tag_include, tag_exclude, tag_semver)
        with self.records.transaction():
            if self.records.exists(name):
                raise HierarchyError(
                    INVALID, f"connected registry {name!r} already exists in the hierarchy"
                )
            if parent is not None:
                parent_node = self.get(parent)
                if parent_node.mode == READ_ONLY and mode != READ_ONLY:
                    raise HierarchyError(
                        INVALID,
                        f"can't create {name!r} with mode {mode} under {parent!r}, whose mode is "
                        "ReadOnly: a ReadOnly parent only has ReadOnly children"
                    )
                uncovered = repositories_covered(parent_node.repositories, repos)
                if uncovered is not None:
                    raise HierarchyError(
                        INVALID,
                        f"repository {uncovered!r} is not among the repositories of parent "
                        f"{parent!r} ({', '.join(parent_node.repositories)})"
                    )
            self._create_sync_token(name, mode, repos)
            now = timestamp(self.clock())
            self.records.add(
                ConnectedRegistry(
                    name=name,
                    mode=mode,
                    parent=parent,
                    repositories=repos,
                    client_tokens=tuple(tokens),
                    sync_schedule=sync_schedule,
                    sync_window=None if sync_schedule == CONTINUOUS else sync_window,
                    message_ttl=message_ttl,
                    log_level=log_level,
                    sync_token=name,
                    activation_status=INACTIVE,
                    created_at=now,
                    updated_at=now,
                    tag_include=tag_include,
                    tag_exclude=tag_exclude,
                    tag_semver=tag_semver,
                )
            )
            for ancestor in self.ancestors(name):
                self._grant(ancestor.sync_token, name, mode, repos)
        return self.get(name)

    def _repositories(self, repositories: list[str]) -> tuple[str, ...]:
        if not repositories:
            raise HierarchyError(INVALID, "a connected registry needs at least one --repository")
        try:
            return tuple(dict.fromkeys(validate_pattern(r) for r in repositories))
        except PatternError as err:
            raise HierarchyError(INVALID, str(err)) from None

    def _client_tokens(self, names: list[str]) -> list[str]:
        unique = list(dict.fromkeys(names))
        if len(unique) > self.max_client_tokens:
            raise HierarchyError(
                INVALID,
                f"a connected registry has at most {self.max_client_tokens} client tokens, "
                f"not {len(unique)}"
            )
        for token in unique:
            try:
                self.credentials.token(token)
            except NotFound:
                raise HierarchyError(INVALID, f"client token {token!r} not found") from None
            if self.records.exists(token):
                raise HierarchyError(INVALID, f"{token!r} is a sync token, not a client token")
        return unique

    @staticmethod
    def _settings(schedule: str, window: str | None, ttl: str, log_level: str) -> None:
        try:
            validate_schedule(schedule, window)
            validate_ttl(ttl)
        except ScheduleError as err:
            raise HierarchyError(INVALID, str(err)) from None
        if log_level not in LOG_LEVELS:
            raise HierarchyError(INVALID, f"log level must be one of {', '.join(LOG_LEVELS)}")

    @staticmethod
    def _tag_filters(include: str | None, exclude: str | None, semver: str | None) -> None:
        for what, pattern in (("tag include", include), ("tag exclude", exclude)):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as err:
                    message = f"{what} {pattern!r} is not a regular expression: {err}"
                    raise HierarchyError(INVALID, message) from None
        if semver is not None:
            try:
                parse_range(semver)
            except SemverError as err:
                raise HierarchyError(INVALID, f"tag semver: {err}") from None

    def _create_sync_token(self, name: str, mode: str, repositories: tuple[str, ...]) -> None:
        permissions = tuple(Permission(r, REPOSITORY_ACTIONS[mode]) for r in repositories)
        gateways = (GatewayPermission(name.lower(), frozenset(GATEWAY_ACTIONS)),)
        self._refuse_leftovers(name)
        try:
            self.credentials.create_scope_map(
                name,
                permissions,
                f"sync scope map of connected registry {name}",
                gateways=gateways,
            )
            self.credentials.create_token(name, name, with_passwords=False)
        except CredentialError as err:
            raise HierarchyError(INVALID, f"cannot create the sync token {name!r}: {err}") from None

    def _refuse_leftovers(self, name: str) -> None:
        """A token or scope map named `name` (what `delete` without `cleanup` keeps) is refused
        with the commands that remove it, the ones that `delete` printed."""
        found: list[str] = []
        commands: list[str] = []
        with contextlib.suppress(NotFound):
            self.credentials.token(name)
            found.append(f"token {name!r}")
            commands.append(f"`connected-registry token delete {name} --yes`")
        with contextlib.suppress(NotFound):
            self.credentials.scope_map(name)
            found.append(f"scope map {name!r}")
            commands.append(f"`connected-registry scope-map delete {name} --yes`")
        if found:
            raise HierarchyError(
                INVALID,
                f"cannot create the sync token {name!r}: {' and '.join(found)} already "
                f"{'exist' if len(found) > 1 else 'exists'} (a connected registry deleted "
                f"without --cleanup keeps them); remove {'them' if len(found) > 1 else 'it'} on "
                f"the root with {' then '.join(commands)}, or choose another name"
            )

    def _grant(self, scope_map: str, child: str, mode: str, repositories: tuple[str, ...]) -> None:
        self.credentials.update_scope_map(
            scope_map,
            add=tuple(Permission(r, REPOSITORY_ACTIONS[mode]) for r in repositories),
            add_gateways=(GatewayPermission(child.lower(), frozenset(GATEWAY_ACTIONS)),),
        )

    def update(
        self,
        name: str,
        sync_schedule: str | None = None,
        sync_window: str | None = None,
        message_ttl: str | None = None,
        log_level: str | None = None,
        add_client_tokens: list[str] | None = None,
        remove_client_tokens: list[str] | None = None,
        tag_include: str | None = None,
        tag_exclude: str | None = None,
        tag_semver: str | None = None,
    ) -> ConnectedRegistry:
        """Change what is given; a tag filter given as "" is removed."""
        add, remove = add_client_tokens or [], remove_client_tokens or []
        both = set(add) & set(remove)
        if both:
            raise HierarchyError(INVALID, f"{sorted(both)[0]!r} is both added and removed")
        with self.records.transaction():
            cr = self.get(name)
            schedule = sync_schedule or cr.sync_schedule
            window = sync_window if sync_window is not None else cr.sync_window
            if schedule == CONTINUOUS:
                window = None
            ttl = message_ttl or cr.message_ttl
            level = log_level or cr.log_level
            self._settings(schedule, window, ttl, level)
            tokens = [t for t in cr.client_tokens if t not in remove]
            tokens = self._client_tokens(tokens + [t for t in add if t not in tokens])
            include = _filter_update(tag_include, cr.tag_include)
            exclude = _filter_update(tag_exclude, cr.tag_exclude)
            semver = _filter_update(tag_semver, cr.tag_semver)
            self._tag_filters(include, exclude, semver)
            self.records.update_settings(
                replace(
                    cr,
                    sync_schedule=schedule,
                    sync_window=window,
                    message_ttl=ttl,
                    log_level=level,
                    client_tokens=tuple(tokens),
                    tag_include=include,
                    tag_exclude=exclude,
                    tag_semver=semver,
                    updated_at=timestamp(self.clock()),
                )
            )
        return self.get(name)

    def update_permissions(
        self, name: str, add: list[str] | None = None, remove: list[str] | None = None
    ) -> ConnectedRegistry:
        """ACR's `permissions update`: added repositories go to this registry and every
        ancestor; removed ones leave it and every descendant."""
        add, remove = list(add or []), list(remove or [])
        both = set(add) & set(remove)
        if both:
            raise HierarchyError(INVALID, f"{sorted(both)[0]!r} is both added and removed")
        with self.records.transaction():
            cr = self.get(name)
            added = self._repositories(add) if add else ()
            if cr.parent is not None and added:
                parent = self.get(cr.parent)
                uncovered = repositories_covered(parent.repositories, added)
                if uncovered is not None:
                    raise HierarchyError(
                        INVALID,
                        f"repository {uncovered!r} is not among the repositories of parent "
                        f"{parent.name!r}; add it there first"
                    )
            repositories = tuple(dict.fromkeys([*cr.repositories, *added]))
            repositories = tuple(r for r in repositories if r not in remove)
            if not repositories:
                raise HierarchyError(INVALID, f"{name!r} would be left with no repositories")
            self._set_repositories(cr, repositories, added)
            for descendant in self.descendants(name):
                kept = tuple(r for r in descendant.repositories if r not in remove)
                if kept != descendant.repositories and kept:
                    self._set_repositories(descendant, kept, ())
        return self.get(name)

    def _set_repositories(
        self, cr: ConnectedRegistry, repositories: tuple[str, ...], added: tuple[str, ...]
    ) -> None:
        removed = tuple(r for r in cr.repositories if r not in repositories)
        actions = REPOSITORY_ACTIONS[cr.mode]
        self.credentials.update_scope_map(
            cr.sync_token,
            add=tuple(Permission(r, actions) for r in added),
            remove=tuple(Permission(r, frozenset(ACTIONS)) for r in removed),
        )
        for ancestor in self.ancestors(cr.name):
            if added:
                self._grant(ancestor.sync_token, cr.name, cr.mode, added)
        self.records.set_repositories(cr.name, repositories, timestamp(self.clock()))

    def delete(self, name: str, cleanup: bool = False) -> list[str]:
        """Delete the resource. With `cleanup` also its sync token and scope map and its
        gateway actions on every ancestor; without, returns the commands that would."""
        with self.records.transaction():
            cr = self.get(name)
            children = self.children(name)
            if children:
                raise HierarchyError(
                    INVALID,
                    f"{name!r} has connected registries below it "
                    f"({', '.join(c.name for c in children)}); delete them first"
                )
            ancestors = self.ancestors(name)
            self.records.delete(name)
            gateway = (GatewayPermission(name.lower(), frozenset(GATEWAY_ACTIONS)),)
            if not cleanup:
                return [
                    f"connected-registry token delete {cr.sync_token} --yes",
                    f"connected-registry scope-map delete {cr.sync_token} --yes",
                ]
            # Either may already have been deleted by hand; the clean-up still finishes.
            with contextlib.suppress(NotFound):
                self.credentials.delete_token(cr.sync_token)
            with contextlib.suppress(NotFound):
                self.credentials.delete_scope_map(cr.sync_token)
            for ancestor in ancestors:
                self.credentials.update_scope_map(ancestor.sync_token, remove_gateways=gateway)
        return []

    def request_resync(self, name: str) -> ConnectedRegistry:
        self.get(name)
        self.records.request_resync(name, timestamp(self.clock()))
        return self.get(name)

    # -- activation and what instances report ------------------------------------------------

    def activate(
        self, name: str, instance_id: str, version: str, login_server: str, hostname: str
    ) -> ConnectedRegistry:
        """Claim the resource for one instance; the same instance again is a no-op."""
        with self.records.transaction():
            cr = self.get(name)
            if cr.activation_status == ACTIVE and cr.instance_id != instance_id:
                raise HierarchyError("ALREADY_ACTIVATED", ALREADY_ACTIVATED_MESSAGE, 409)
            self.records.activate(
                name, ACTIVE, instance_id, version, login_server, timestamp(self.clock())
            )
        return self.get(name)

    def deactivate(self, name: str, instance_id: str | None = None) -> None:
        """Release the claim. With `instance_id` (a device asking), only the active instance
        may; without (the root's operator), always."""
        with self.records.transaction():
            cr = self.get(name)
            if (
                instance_id is not None
                and cr.activation_status == ACTIVE
                and (cr.instance_id != instance_id)
            ):
                raise HierarchyError(
                    "DENIED", "only the active instance may deactivate this connected registry", 403
                )
            self.records.deactivate(name, INACTIVE)

    def report_status(self, name: str, report: dict[str, Any]) -> None:
        cr = self.get(name)
        if cr.activation_status != ACTIVE:
            raise HierarchyError(
                "NOT_ACTIVATED",
                f"connected registry {name!r} is not activated; activate it again",
                409,
            )
        details = report.get("statusDetails") or []
        if not isinstance(details, list):
            raise HierarchyError("MANIFEST_INVALID", "statusDetails must be a list")
        self.records.report(
            name,
            Report(
                state=_string(report.get("state")),
                last_sync_time=_string(report.get("lastSyncTime")),
                version=_string(report.get("version")),
                login_server=_string(report.get("loginServer")),
                tls=_string(report.get("tls")),
                status_details=details[:50],
                resync_done=bool(report.get("resyncDone")),
            ),
            timestamp(self.clock()),
        )

    def touch(self, name: str) -> None:
        """Any gateway call is contact: it keeps the registry Online."""
        self.records.touch(name, timestamp(self.clock()))

    def touch_relaying(self, token: str, name: str) -> None:
        """A call for `name` made with another registry's sync token (an ancestor relaying):
        contact from that registry too, if it is active."""
        self.records.touch_relaying(token, name, ACTIVE, timestamp(self.clock()))

    # -- the settings a device receives ---------------------------------------------------------

    def settings(self, name: str) -> dict[str, Any]:
        """PROTOCOL.md §3 settings of `name`, with its descendants' (for relaying)."""
        cr = self.get(name)
        return {
            "name": cr.name,
            "mode": cr.mode,
            "parent": cr.parent,
            "repositories": list(cr.repositories),
            "tagInclude": cr.tag_include,
            "tagExclude": cr.tag_exclude,
            "tagSemver": cr.tag_semver,
            "syncSchedule": cr.sync_schedule,
            "syncWindow": cr.sync_window,
            "messageTtl": cr.message_ttl,
            "logLevel": cr.log_level,
            "resync": cr.resync_requested,
            "clientTokens": [self._token_settings(t) for t in cr.client_tokens],
            "syncToken": self._token_settings(cr.sync_token),
            "descendants": [self.settings(child.name) for child in self.children(name)],
        }

    def _token_settings(self, name: str) -> dict[str, Any]:
        try:
            token = self.credentials.token(name)
            scope_map = self.credentials.scope_map(token.scope_map)
        except NotFound:
            return {"name": name, "status": "disabled", "scopeMap": None, "passwordHashes": []}
        return {
            "name": token.name,
            "status": token.status,
            "scopeMap": {
                "name": scope_map.name,
                "repositories": [p.to_json() for p in scope_map.permissions],
                "gateways": [g.to_json() for g in scope_map.gateways],
            },
            "passwordHashes": [
                {"id": p.name, "hash": p.hash, "expiry": p.expiry} for p in token.passwords
            ],
        }


def settings_etag(settings: dict[str, Any]) -> str:
    body = json.dumps(settings, sort_keys=True).encode()
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def offline_after_from(text: str | None) -> timedelta | None:
    return parse_duration(text, "[hierarchy] offline_after") if text else None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None
