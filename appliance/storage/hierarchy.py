"""`ConnectedRegistries`: the connected-registry resources a root keeps, as stored.

The rules of the hierarchy (names, modes, coverage, who may activate) are
`control/hierarchy.py`'s; this module answers what is there and writes what it is told.
Repositories, client tokens and status details are kept as JSON lists.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlite_utils

from appliance.storage.schema import write_transaction


@dataclass(frozen=True)
class ConnectedRegistry:
    name: str
    mode: str
    parent: str | None
    repositories: tuple[str, ...]
    client_tokens: tuple[str, ...]
    sync_schedule: str
    sync_window: str | None
    message_ttl: str
    log_level: str
    sync_token: str
    activation_status: str
    created_at: str
    updated_at: str
    tag_include: str | None = None
    tag_exclude: str | None = None
    instance_id: str | None = None
    last_activity_time: str | None = None
    last_sync_time: str | None = None
    reported_state: str | None = None
    version: str | None = None
    login_server: str | None = None
    tls: str | None = None
    status_details: tuple[dict, ...] = field(default=())
    resync_requested: bool = False
    tag_semver: str | None = None


@dataclass(frozen=True)
class Report:
    """What an instance reported (PROTOCOL.md §6); None keeps what was there."""

    state: str | None
    last_sync_time: str | None
    version: str | None
    login_server: str | None
    tls: str | None
    status_details: list
    resync_done: bool


_COLUMNS = (
    "name, mode, parent, repositories, client_tokens, sync_schedule, sync_window, message_ttl, "
    "log_level, sync_token, activation_status, created_at, updated_at, tag_include, "
    "tag_exclude, instance_id, last_activity_time, last_sync_time, reported_state, version, "
    "login_server, tls, status_details, resync_requested, tag_semver"
)


def _registry(row: tuple) -> ConnectedRegistry:
    values = list(row)
    values[3] = tuple(json.loads(values[3]))
    values[4] = tuple(json.loads(values[4]))
    values[22] = tuple(json.loads(values[22]))
    values[23] = bool(values[23])
    return ConnectedRegistry(*values)


class ConnectedRegistries:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self._db = db
        self._conn = db.conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with write_transaction(self._db):
            yield

    def get(self, name: str) -> ConnectedRegistry | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM connected_registries WHERE name = ?", (name,)
        ).fetchone()
        return _registry(row) if row else None

    def all(self) -> list[ConnectedRegistry]:
        return [
            _registry(row)
            for row in self._conn.execute(
                f"SELECT {_COLUMNS} FROM connected_registries ORDER BY name"
            )
        ]

    def exists(self, name: str) -> bool:
        """Whether a registry has this name, in any letter case."""
        return (
            self._conn.execute(
                "SELECT 1 FROM connected_registries WHERE lower(name) = lower(?)", (name,)
            ).fetchone()
            is not None
        )

    def add(self, registry: ConnectedRegistry) -> None:
        """Store a new registry: its settings; what instances report starts empty."""
        r = registry
        self._conn.execute(
            "INSERT INTO connected_registries (name, mode, parent, repositories, "
            "client_tokens, sync_schedule, sync_window, message_ttl, log_level, sync_token, "
            "activation_status, status_details, resync_requested, tag_include, tag_exclude, "
            "tag_semver, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '[]', 0, ?, ?, ?, ?, ?)",
            (
                r.name,
                r.mode,
                r.parent,
                json.dumps(list(r.repositories)),
                json.dumps(list(r.client_tokens)),
                r.sync_schedule,
                r.sync_window,
                r.message_ttl,
                r.log_level,
                r.sync_token,
                r.activation_status,
                r.tag_include,
                r.tag_exclude,
                r.tag_semver,
                r.created_at,
                r.updated_at,
            ),
        )

    def update_settings(self, registry: ConnectedRegistry) -> None:
        """Store the registry's schedule, window, TTL, log level, client tokens and tag filters
        (nothing else can change by an update)."""
        r = registry
        self._conn.execute(
            "UPDATE connected_registries SET sync_schedule = ?, sync_window = ?, "
            "message_ttl = ?, log_level = ?, client_tokens = ?, tag_include = ?, "
            "tag_exclude = ?, tag_semver = ?, updated_at = ? WHERE name = ?",
            (
                r.sync_schedule,
                r.sync_window,
                r.message_ttl,
                r.log_level,
                json.dumps(list(r.client_tokens)),
                r.tag_include,
                r.tag_exclude,
                r.tag_semver,
                r.updated_at,
                r.name,
            ),
        )

    def set_repositories(self, name: str, repositories: tuple[str, ...], now: str) -> None:
        self._conn.execute(
            "UPDATE connected_registries SET repositories = ?, updated_at = ? WHERE name = ?",
            (json.dumps(list(repositories)), now, name),
        )

    def delete(self, name: str) -> None:
        self._conn.execute("DELETE FROM connected_registries WHERE name = ?", (name,))

    def request_resync(self, name: str, now: str) -> None:
        self._conn.execute(
            "UPDATE connected_registries SET resync_requested = 1, updated_at = ? WHERE name = ?",
            (now, name),
        )

    def activate(
        self, name: str, status: str, instance_id: str, version: str, login_server: str, now: str
    ) -> None:
        """Record the claiming instance; what an earlier one reported is cleared."""
        self._conn.execute(
            "UPDATE connected_registries SET activation_status = ?, instance_id = ?, "
            "version = ?, login_server = ?, last_activity_time = ?, reported_state = NULL, "
            "status_details = '[]' WHERE name = ?",
            (status, instance_id, version, login_server, now, name),
        )

    def deactivate(self, name: str, status: str) -> None:
        self._conn.execute(
            "UPDATE connected_registries SET activation_status = ?, instance_id = NULL, "
            "reported_state = NULL WHERE name = ?",
            (status, name),
        )

    def report(self, name: str, report: Report, now: str) -> None:
        """Store a status report; it is contact, and `resync_done` clears a resync request."""
        self._conn.execute(
            "UPDATE connected_registries SET reported_state = ?, last_sync_time = "
            "coalesce(?, last_sync_time), version = coalesce(?, version), login_server = "
            "coalesce(?, login_server), tls = coalesce(?, tls), status_details = ?, "
            "last_activity_time = ?, resync_requested = CASE WHEN ? THEN 0 ELSE "
            "resync_requested END WHERE name = ?",
            (
                report.state,
                report.last_sync_time,
                report.version,
                report.login_server,
                report.tls,
                json.dumps(report.status_details),
                now,
                report.resync_done,
                name,
            ),
        )

    def touch(self, name: str, now: str) -> None:
        self._conn.execute(
            "UPDATE connected_registries SET last_activity_time = ? WHERE name = ?", (now, name)
        )

    def touch_relaying(self, token: str, name: str, status: str, now: str) -> None:
        """Contact from the registries in `status` whose sync token is `token`, other than
        `name` (an ancestor relaying for it)."""
        self._conn.execute(
            "UPDATE connected_registries SET last_activity_time = ? WHERE sync_token = ? "
            "AND lower(name) != lower(?) AND activation_status = ?",
            (now, token, name, status),
        )
