"""`Node`: what this node is and what its sync last found, kept in the `node_state` table.

The keys with one meaning are typed attributes (`store.node.role`, `store.node.mode`,
`store.node.last_contact`); `control/node.py` says what each means. Bookkeeping kept under a
prefix (push sync's `parent_tags/<repo>/<tag>`, `push_reconcile/<repo>`, sync's
`upstream_run/<url>`) is read and written by key with `get`, `set`, `delete` and `keys`.

Read on every write request (mode, role), so the table is kept in memory and reloaded when a
commit has happened since, in this process or another (an `activate`, a CLI command): `PRAGMA
data_version` changes exactly then for other connections, and `set`/`delete` drop the copy for
this one.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class _Key(Generic[T]):
    """A node_state key read and written as an attribute; assigning None deletes the key."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = name

    @overload
    def __get__(self, node: None, owner: type) -> _Key[T]: ...
    @overload
    def __get__(self, node: Node, owner: type) -> T | None: ...
    def __get__(self, node: Node | None, owner: type) -> _Key[T] | T | None:
        if node is None:
            return self
        text = node.get(self.key)
        return None if text is None else self.load(text)

    def __set__(self, node: Node, value: T | None) -> None:
        if value is None:
            node.delete(self.key)
        else:
            node.set(self.key, self.dump(value))

    def load(self, text: str) -> T:
        return text  # type: ignore[return-value]

    def dump(self, value: T) -> str:
        return str(value)


class _Json(_Key[dict[str, Any]]):
    def load(self, text: str) -> dict[str, Any]:
        return json.loads(text)

    def dump(self, value: dict[str, Any]) -> str:
        return json.dumps(value, sort_keys=True)


class _Flag(_Key[bool]):
    """Set ("1") or absent; assigning False deletes it."""

    def load(self, text: str) -> bool:
        return True

    def __set__(self, node: Node, value: bool | None) -> None:
        super().__set__(node, True if value else None)


class Node:
    role = _Key[str]()
    name = _Key[str]()
    mode = _Key[str]()  # absent on a root and a development registry
    instance_id = _Key[str]()
    login_server = _Key[str]()
    admin_token = _Key[str]()
    parent_endpoint = _Key[str]()
    parent_protocol = _Key[str]()
    parent_fingerprint = _Key[str]()
    sync_token = _Key[str]()
    settings = _Json()
    settings_etag = _Key[str]()
    changes_cursor = _Key[str]()
    connection_state = _Key[str]()
    last_contact = _Key[str]()
    last_sync_time = _Key[str]()
    activated_at = _Key[str]()
    last_run = _Json()
    resync_requested = _Flag()

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._values: dict[str, str] | None = None
        self._version = -1

    def get(self, key: str) -> str | None:
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if self._values is None or version != self._version:
            self._values = dict(self._conn.execute("SELECT key, value FROM node_state"))
            self._version = version
        return self._values.get(key)

    def set(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO node_state (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
        self._values = None

    def delete(self, *keys: str) -> None:
        """Delete the keys, in one statement (an absent one is fine)."""
        marks = ", ".join("?" * len(keys))
        self._conn.execute(f"DELETE FROM node_state WHERE key IN ({marks})", keys)
        self._values = None

    def keys(self, prefix: str) -> list[str]:
        """The keys that start with `prefix`, in order (a range scan of the key)."""
        return [
            row[0]
            for row in self._conn.execute(
                "SELECT key FROM node_state WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, prefix + "\U0010ffff"),
            )
        ]
