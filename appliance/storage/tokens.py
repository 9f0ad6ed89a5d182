"""`Tokens`: the tokens, scope maps and password hashes of a registry, as stored.

Rules (names, limits, who may edit what, what the parent sends) are `auth/tokens.py`'s; this
module answers what is there and writes what it is told. A scope map's permissions are kept as
the JSON list `auth/tokens.py` writes and reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import sqlite_utils

from appliance.storage.schema import write_transaction

LOCAL, PARENT = "local", "parent"
_SCOPE_MAP_COLUMNS = "name, description, permissions, origin, created_at, updated_at"


@dataclass(frozen=True)
class StoredScopeMap:
    name: str
    description: str | None
    permissions: str
    origin: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class PasswordSlot:
    name: str
    hash: str
    expiry: str | None
    created_at: str

    def expired(self, now: datetime) -> bool:
        return self.expiry is not None and datetime.fromisoformat(self.expiry) <= now


@dataclass(frozen=True)
class Token:
    name: str
    scope_map: str
    status: str
    origin: str
    created_at: str
    updated_at: str
    passwords: tuple[PasswordSlot, ...]

    @property
    def enabled(self) -> bool:
        return self.status == "enabled"

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "scopeMap": self.scope_map,
            "status": self.status,
            "origin": self.origin,
            "creationDate": self.created_at,
            "updatedDate": self.updated_at,
            "credentials": {
                "passwords": [
                    {"name": p.name, "creationTime": p.created_at, "expiry": p.expiry}
                    for p in self.passwords
                ]
            },
        }


class Tokens:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self._db = db
        self._conn = db.conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with write_transaction(self._db):
            yield

    # -- scope maps ----------------------------------------------------------------------------

    def scope_map(self, name: str) -> StoredScopeMap | None:
        row = self._conn.execute(
            f"SELECT {_SCOPE_MAP_COLUMNS} FROM scope_maps WHERE name = ?", (name,)
        ).fetchone()
        return StoredScopeMap(*row) if row else None

    def scope_maps(self) -> list[StoredScopeMap]:
        return [
            StoredScopeMap(*row)
            for row in self._conn.execute(
                f"SELECT {_SCOPE_MAP_COLUMNS} FROM scope_maps ORDER BY name"
            )
        ]

    def scope_map_count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM scope_maps").fetchone()[0]

    def local_scope_map_names(self) -> set[str]:
        return {
            row[0]
            for row in self._conn.execute("SELECT name FROM scope_maps WHERE origin = ?", (LOCAL,))
        }

    def add_scope_map(
        self, name: str, description: str, permissions: str, origin: str, now: str
    ) -> None:
        self._conn.execute(
            f"INSERT INTO scope_maps ({_SCOPE_MAP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (name, description, permissions, origin, now, now),
        )

    def put_parent_scope_map(self, name: str, description: str, permissions: str, now: str) -> None:
        """Create the parent-origin scope map, or replace its permissions."""
        self._conn.execute(
            f"INSERT INTO scope_maps ({_SCOPE_MAP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE "
            "SET permissions = excluded.permissions, updated_at = excluded.updated_at",
            (name, description, permissions, PARENT, now, now),
        )

    def update_scope_map(self, name: str, permissions: str, description: str, now: str) -> None:
        self._conn.execute(
            "UPDATE scope_maps SET permissions = ?, description = ?, updated_at = ? "
            "WHERE name = ?",
            (permissions, description, now, name),
        )

    def delete_scope_map(self, name: str) -> None:
        self._conn.execute("DELETE FROM scope_maps WHERE name = ?", (name,))

    def delete_unused_parent_scope_maps(self) -> None:
        self._conn.execute(
            "DELETE FROM scope_maps WHERE origin = ? "
            "AND name NOT IN (SELECT scope_map FROM tokens)",
            (PARENT,),
        )

    # -- tokens --------------------------------------------------------------------------------

    def token(self, name: str) -> Token | None:
        row = self._conn.execute(
            "SELECT name, scope_map, status, origin, created_at, updated_at FROM tokens "
            "WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return None
        slots = tuple(
            PasswordSlot(*r)
            for r in self._conn.execute(
                "SELECT name, hash, expiry, created_at FROM token_passwords WHERE token = ? "
                "ORDER BY name",
                (name,),
            )
        )
        return Token(*row, passwords=slots)

    def token_names(self) -> list[str]:
        return [row[0] for row in self._conn.execute("SELECT name FROM tokens ORDER BY name")]

    def token_count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM tokens").fetchone()[0]

    def local_token_names(self) -> set[str]:
        return {
            row[0]
            for row in self._conn.execute("SELECT name FROM tokens WHERE origin = ?", (LOCAL,))
        }

    def tokens_using(self, scope_map: str) -> list[str]:
        return [
            row[0]
            for row in self._conn.execute(
                "SELECT name FROM tokens WHERE scope_map = ? ORDER BY name", (scope_map,)
            )
        ]

    def sync_token_owner(self, token: str) -> str | None:
        """The connected registry whose sync token `token` is, if any."""
        row = self._conn.execute(
            "SELECT name FROM connected_registries WHERE sync_token = ?", (token,)
        ).fetchone()
        return row[0] if row else None

    def grants(self, token: str) -> tuple[str, str] | None:
        """The token's status and its scope map's permissions; None for no such token."""
        row = self._conn.execute(
            "SELECT t.status, s.permissions FROM tokens t JOIN scope_maps s "
            "ON s.name = t.scope_map WHERE t.name = ?",
            (token,),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def add_token(
        self, name: str, scope_map: str, status: str, origin: str, created_at: str, now: str
    ) -> None:
        self._conn.execute(
            "INSERT INTO tokens (name, scope_map, status, origin, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, scope_map, status, origin, created_at, now),
        )

    def update_token(self, name: str, scope_map: str, status: str, now: str) -> None:
        self._conn.execute(
            "UPDATE tokens SET scope_map = ?, status = ?, updated_at = ? WHERE name = ?",
            (scope_map, status, now, name),
        )

    def delete_token(self, name: str) -> None:
        """The token and its passwords."""
        self._conn.execute("DELETE FROM token_passwords WHERE token = ?", (name,))
        self._conn.execute("DELETE FROM tokens WHERE name = ?", (name,))

    def delete_parent_tokens(self) -> dict[str, str]:
        """Delete every parent-origin token with its passwords; their creation times, by name."""
        created = dict(
            self._conn.execute("SELECT name, created_at FROM tokens WHERE origin = ?", (PARENT,))
        )
        self._conn.execute(
            "DELETE FROM token_passwords WHERE token IN "
            "(SELECT name FROM tokens WHERE origin = ?)",
            (PARENT,),
        )
        self._conn.execute("DELETE FROM tokens WHERE origin = ?", (PARENT,))
        return created

    # -- passwords -----------------------------------------------------------------------------

    def set_password(
        self, token: str, slot: str, hashed: str, expiry: str | None, now: str
    ) -> None:
        """Store `slot`'s hash, replacing the one it had."""
        self._conn.execute(
            "DELETE FROM token_passwords WHERE token = ? AND name = ?", (token, slot)
        )
        self._conn.execute(
            "INSERT INTO token_passwords (token, name, hash, expiry, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (token, slot, hashed, expiry, now),
        )

    def delete_password(self, token: str, slot: str) -> bool:
        """False if the token had no such password."""
        return bool(
            self._conn.execute(
                "DELETE FROM token_passwords WHERE token = ? AND name = ?", (token, slot)
            ).rowcount
        )
