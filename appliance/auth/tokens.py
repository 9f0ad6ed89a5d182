"""Tokens and scope maps, kept in the registry database, and password checks against them.

The model is ACR's: a scope map is a named list of repository permissions; a token names one
scope map, is enabled or disabled, and has two passwords (each with an optional expiry) so a
client can move to a new password before the old one is revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from time import monotonic
from typing import Any

import sqlite_utils

from appliance.auth.passwords import PasswordChecks, generate_password, hash_password
from appliance.auth.scopes import (
    GatewayPermission,
    PatternError,
    Permission,
    validate_actions,
    validate_pattern,
)
from appliance.storage.schema import write_transaction

PASSWORD_NAMES = ("password1", "password2")
STATUSES = ("enabled", "disabled")
_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9-]{4,49}")
# A verified password is trusted this long before its slow hash is checked again.
CREDENTIAL_CACHE_SECONDS = 60.0
# From this age on a cached verdict is still served while one check renews it in the background,
# so credentials in steady use never make a request wait for scrypt.
CREDENTIAL_REFRESH_SECONDS = 0.8 * CREDENTIAL_CACHE_SECONDS
_CACHE_LIMIT = 10000


class CredentialError(Exception):
    """A refused token or scope-map operation, in one line a person can act on."""


class NotFound(CredentialError):
    pass


@dataclass(frozen=True)
class ScopeMap:
    name: str
    description: str
    permissions: tuple[Permission, ...]
    origin: str
    created_at: str
    updated_at: str
    gateways: tuple[GatewayPermission, ...] = ()

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "actions": [
                f"repositories/{p.repository}/{action}"
                for p in self.permissions
                for action in sorted(p.actions)
            ]
            + [
                f"gateway/{g.registry}/{action}"
                for g in self.gateways
                for action in sorted(g.actions)
            ],
            "repositories": [p.to_json() for p in self.permissions],
            "gateways": [g.to_json() for g in self.gateways],
            "origin": self.origin,
            "creationDate": self.created_at,
            "updatedDate": self.updated_at,
        }


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def validate_resource_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise CredentialError(
            f"{kind} name {name!r} must be 5-50 letters, digits and '-', starting with a letter"
        )
    return name


def parse_expiry(value: str | None) -> str | None:
    """An ISO 8601 date-time (UTC if no zone), normalised; None for no expiry."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CredentialError(f"expiry {value!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def parse_permissions(pairs: list[tuple[str, list[str]]]) -> tuple[Permission, ...]:
    """`[(repository, [action, …]), …]` → permissions, merging repeated repositories."""
    merged: dict[str, set[str]] = {}
    for repository, actions in pairs:
        try:
            validate_pattern(repository)
            merged.setdefault(repository, set()).update(validate_actions(actions))
        except PatternError as err:
            raise CredentialError(str(err)) from None
    return tuple(Permission(r, frozenset(a)) for r, a in merged.items())


class Credentials:
    """Tokens and scope maps of one registry, with limits from the config."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        max_tokens: int = 20000,
        max_scope_maps: int = 20000,
        max_permissions: int = 500,
        password_checks: PasswordChecks | None = None,
    ) -> None:
        self.db = db
        self.conn = db.conn
        self.max_tokens = max_tokens
        self.max_scope_maps = max_scope_maps
        self.max_permissions = max_permissions
        self.password_checks = password_checks or PasswordChecks()
        self._cache_key = secrets.token_bytes(32)
        self._cache: dict[bytes, _Verdict] = {}
        self._checking: dict[bytes, asyncio.Task[_Verdict]] = {}

    # -- scope maps ----------------------------------------------------------------------------

    def _check_permission_count(self, permissions: tuple[Permission, ...]) -> None:
        if len(permissions) > self.max_permissions:
            raise CredentialError(
                f"a scope map holds at most {self.max_permissions} repository permissions, "
                f"not {len(permissions)}"
            )

    def create_scope_map(
        self,
        name: str,
        permissions: tuple[Permission, ...],
        description: str = "",
        origin: str = "local",
        gateways: tuple[GatewayPermission, ...] = (),
    ) -> ScopeMap:
        validate_resource_name("scope map", name)
        if not permissions and not gateways:
            raise CredentialError("a scope map needs at least one --repository REPO ACTION…")
        self._check_permission_count(permissions)
        with write_transaction(self.db):
            if self._exists("scope_maps", name):
                raise CredentialError(f"scope map {name!r} already exists")
            count = self.conn.execute("SELECT count(*) FROM scope_maps").fetchone()[0]
            if count >= self.max_scope_maps:
                raise CredentialError(
                    f"this registry already has {count} scope maps, the limit "
                    f"({self.max_scope_maps})"
                )
            now = _now()
            self.conn.execute(
                "INSERT INTO scope_maps (name, description, permissions, origin, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (name, description, _dump(permissions, gateways), origin, now, now),
            )
        return self.scope_map(name)

    def update_scope_map(
        self,
        name: str,
        add: tuple[Permission, ...] = (),
        remove: tuple[Permission, ...] = (),
        description: str | None = None,
        by_parent: bool = False,
        add_gateways: tuple[GatewayPermission, ...] = (),
        remove_gateways: tuple[GatewayPermission, ...] = (),
    ) -> ScopeMap:
        with write_transaction(self.db):
            current = self.scope_map(name)
            _check_editable("scope map", current.name, current.origin, by_parent)
            permissions = tuple(
                Permission(r, a) for r, a in _merge(current.permissions, add, remove)
            )
            gateways = tuple(
                GatewayPermission(r, a)
                for r, a in _merge(current.gateways, add_gateways, remove_gateways)
            )
            if not permissions and not gateways:
                raise CredentialError(f"scope map {name!r} would be left with no permissions")
            self._check_permission_count(permissions)
            self.conn.execute(
                "UPDATE scope_maps SET permissions = ?, description = ?, updated_at = ? "
                "WHERE name = ?",
                (
                    _dump(permissions, gateways),
                    current.description if description is None else description,
                    _now(),
                    name,
                ),
            )
        return self.scope_map(name)

    def scope_map(self, name: str) -> ScopeMap:
        row = self.conn.execute(
            "SELECT name, description, permissions, origin, created_at, updated_at "
            "FROM scope_maps WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise NotFound(f"scope map {name!r} not found")
        return _scope_map(row)

    def scope_maps(self) -> list[ScopeMap]:
        return [
            _scope_map(row)
            for row in self.conn.execute(
                "SELECT name, description, permissions, origin, created_at, updated_at "
                "FROM scope_maps ORDER BY name"
            )
        ]

    def delete_scope_map(self, name: str, by_parent: bool = False) -> None:
        with write_transaction(self.db):
            current = self.scope_map(name)
            _check_editable("scope map", name, current.origin, by_parent)
            users = [
                row[0]
                for row in self.conn.execute(
                    "SELECT name FROM tokens WHERE scope_map = ? ORDER BY name", (name,)
                )
            ]
            if users:
                raise CredentialError(
                    f"scope map {name!r} is used by token(s) {', '.join(users[:5])}; "
                    "delete or update them first"
                )
            self.conn.execute("DELETE FROM scope_maps WHERE name = ?", (name,))

    # -- tokens --------------------------------------------------------------------------------

    def create_token(
        self,
        name: str,
        scope_map: str,
        status: str = "enabled",
        expiry: str | None = None,
        with_passwords: bool = True,
        origin: str = "local",
    ) -> tuple[Token, dict[str, str]]:
        """Create a token; returns it and its new passwords (shown once, stored hashed)."""
        validate_resource_name("token", name)
        _check_status(status)
        passwords = {n: generate_password() for n in PASSWORD_NAMES} if with_passwords else {}
        hashes = {n: hash_password(pw) for n, pw in passwords.items()}
        with write_transaction(self.db):
            if self._exists("tokens", name):
                raise CredentialError(f"token {name!r} already exists")
            self.scope_map(scope_map)
            count = self.conn.execute("SELECT count(*) FROM tokens").fetchone()[0]
            if count >= self.max_tokens:
                raise CredentialError(
                    f"this registry already has {count} tokens, the limit ({self.max_tokens})"
                )
            now = _now()
            self.conn.execute(
                "INSERT INTO tokens (name, scope_map, status, origin, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, scope_map, status, origin, now, now),
            )
            for slot, hashed in hashes.items():
                self._store_password(name, slot, hashed, expiry, now)
        return self.token(name), passwords

    def update_token(
        self,
        name: str,
        scope_map: str | None = None,
        status: str | None = None,
        by_parent: bool = False,
    ) -> Token:
        if status is not None:
            _check_status(status)
        with write_transaction(self.db):
            token = self.token(name)
            _check_editable("token", name, token.origin, by_parent)
            if scope_map is not None:
                self.scope_map(scope_map)
            self.conn.execute(
                "UPDATE tokens SET scope_map = ?, status = ?, updated_at = ? WHERE name = ?",
                (scope_map or token.scope_map, status or token.status, _now(), name),
            )
        return self.token(name)

    def generate_password(
        self, name: str, slot: str, expiry: str | None = None, by_parent: bool = False
    ) -> str:
        """Replace one of the token's two passwords; the other keeps working."""
        _check_slot(slot)
        password = generate_password()
        hashed = hash_password(password)
        with write_transaction(self.db):
            token = self.token(name)
            _check_editable("token", name, token.origin, by_parent)
            self.conn.execute(
                "DELETE FROM token_passwords WHERE token = ? AND name = ?", (name, slot)
            )
            self._store_password(name, slot, hashed, expiry, _now())
        return password

    def delete_password(self, name: str, slot: str, by_parent: bool = False) -> None:
        _check_slot(slot)
        with write_transaction(self.db):
            token = self.token(name)
            _check_editable("token", name, token.origin, by_parent)
            deleted = self.conn.execute(
                "DELETE FROM token_passwords WHERE token = ? AND name = ?", (name, slot)
            ).rowcount
            if not deleted:
                raise NotFound(f"token {name!r} has no {slot}")

    def _store_password(
        self, token: str, slot: str, hashed: str, expiry: str | None, now: str
    ) -> None:
        self.conn.execute(
            "INSERT INTO token_passwords (token, name, hash, expiry, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (token, slot, hashed, parse_expiry(expiry), now),
        )

    def token(self, name: str) -> Token:
        row = self.conn.execute(
            "SELECT name, scope_map, status, origin, created_at, updated_at FROM tokens "
            "WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise NotFound(f"token {name!r} not found")
        slots = tuple(
            PasswordSlot(*r)
            for r in self.conn.execute(
                "SELECT name, hash, expiry, created_at FROM token_passwords WHERE token = ? "
                "ORDER BY name",
                (name,),
            )
        )
        return Token(*row, passwords=slots)

    def tokens(self) -> list[Token]:
        names = [row[0] for row in self.conn.execute("SELECT name FROM tokens ORDER BY name")]
        return [self.token(n) for n in names]

    def delete_token(self, name: str, by_parent: bool = False) -> None:
        with write_transaction(self.db):
            token = self.token(name)
            _check_editable("token", name, token.origin, by_parent)
            owner = self.conn.execute(
                "SELECT name FROM connected_registries WHERE sync_token = ?", (name,)
            ).fetchone()
            if owner is not None:
                raise CredentialError(
                    f"token {name!r} is the sync token of connected registry {owner[0]!r}; "
                    "delete the connected registry first"
                )
            self.conn.execute("DELETE FROM token_passwords WHERE token = ?", (name,))
            self.conn.execute("DELETE FROM tokens WHERE name = ?", (name,))

    # -- what the parent sends -----------------------------------------------------------------

    def replace_from_parent(self, token_settings: list[dict[str, Any]]) -> list[str]:
        """Make this node's parent-origin tokens exactly `token_settings`: the `clientTokens` of
        the parent's settings (PROTOCOL.md §3), `{name, status, scopeMap: {name, repositories,
        gateways}, passwordHashes: [{id, hash, expiry}]}` each.

        Tokens and their scope maps are created or replaced with origin 'parent'; password
        hashes are stored as received (only hashes travel, so this node checks its clients'
        passwords while offline). Parent-origin tokens no longer sent are deleted, and so are
        parent-origin scope maps nothing uses any more. Anything with origin 'local' is never
        touched: a parent token whose name, or whose scope map's name, a local one already has
        is skipped, and the skipped names are returned. A token the parent sends without a
        scope map (gone on the parent) is not created. One transaction: a malformed entry
        (CredentialError) changes nothing. Limits are not applied: the parent enforced its own.
        """
        wanted = [_parent_token(entry) for entry in token_settings]
        skipped: list[str] = []
        with write_transaction(self.db):
            local_tokens = self._names("tokens", "local")
            local_maps = self._names("scope_maps", "local")
            created = dict(
                self.conn.execute("SELECT name, created_at FROM tokens WHERE origin = 'parent'")
            )
            self.conn.execute(
                "DELETE FROM token_passwords WHERE token IN "
                "(SELECT name FROM tokens WHERE origin = 'parent')"
            )
            self.conn.execute("DELETE FROM tokens WHERE origin = 'parent'")
            now = _now()
            for token in wanted:
                if token.name in local_tokens or (
                    token.scope_map is not None and token.scope_map.name in local_maps
                ):
                    skipped.append(token.name)
                    continue
                if token.scope_map is None:
                    continue
                scope_map = token.scope_map
                self.conn.execute(
                    "INSERT INTO scope_maps (name, description, permissions, origin, created_at, "
                    "updated_at) VALUES (?, ?, ?, 'parent', ?, ?) ON CONFLICT (name) DO UPDATE "
                    "SET permissions = excluded.permissions, updated_at = excluded.updated_at",
                    (
                        scope_map.name,
                        "from the parent registry",
                        _dump(scope_map.permissions, scope_map.gateways),
                        now,
                        now,
                    ),
                )
                self.conn.execute(
                    "INSERT INTO tokens (name, scope_map, status, origin, created_at, updated_at) "
                    "VALUES (?, ?, ?, 'parent', ?, ?)",
                    (token.name, scope_map.name, token.status, created.get(token.name, now), now),
                )
                for slot, hashed, expiry in token.passwords:
                    self._store_password(token.name, slot, hashed, expiry, now)
            self.conn.execute(
                "DELETE FROM scope_maps WHERE origin = 'parent' "
                "AND name NOT IN (SELECT scope_map FROM tokens)"
            )
        return skipped

    def _names(self, table: str, origin: str) -> set[str]:
        return {
            row[0]
            for row in self.conn.execute(f"SELECT name FROM {table} WHERE origin = ?", (origin,))
        }

    def _exists(self, table: str, name: str) -> bool:
        return (
            self.conn.execute(
                f"SELECT 1 FROM {table} WHERE name = ?",
                (name,),
            ).fetchone()
            is not None
        )

    # -- authentication ------------------------------------------------------------------------

    def permissions_of(self, token_name: str) -> tuple[Permission, ...]:
        row = self.conn.execute(
            "SELECT s.permissions FROM tokens t JOIN scope_maps s ON s.name = t.scope_map "
            "WHERE t.name = ?",
            (token_name,),
        ).fetchone()
        return _load(row[0]) if row else ()

    def _enabled_grants(
        self, token_name: str
    ) -> tuple[tuple[Permission, ...], tuple[GatewayPermission, ...]] | None:
        """What an enabled token's scope map grants; None when it is disabled or gone."""
        row = self.conn.execute(
            "SELECT t.status, s.permissions FROM tokens t JOIN scope_maps s "
            "ON s.name = t.scope_map WHERE t.name = ?",
            (token_name,),
        ).fetchone()
        if row is None or row[0] != "enabled":
            return None
        return _load_all(row[1])

    def gateway_actions(self, token_name: str, registry: str) -> frozenset[str]:
        """What an enabled token may do on the gateway API for `registry`."""
        grants = self._enabled_grants(token_name)
        gateways = grants[1] if grants else ()
        return frozenset(a for g in gateways if g.registry == registry for a in g.actions)

    def standing_permissions(self, token_name: str) -> tuple[Permission, ...] | None:
        """The permissions of an enabled token; None when it is disabled or gone."""
        grants = self._enabled_grants(token_name)
        return grants[0] if grants else None

    async def authenticate(self, name: str, password: str) -> Token | None:
        """The enabled token whose unexpired password this is, else None.

        A verdict is cached for `CREDENTIAL_CACHE_SECONDS` under an HMAC of the credentials, so
        Basic auth on every request costs one scrypt a minute; in its last fifth it is renewed
        by one check in the background while it is still served. Concurrent requests with the
        same credentials share one check. The cache holds which password slot matched and its
        hash: rotating or deleting that password, disabling the token or letting the password
        expire takes effect at once, cache or not.
        """
        try:
            token = self.token(name)
        except NotFound:
            return None
        if not token.enabled:
            return None
        key = hmac.new(self._cache_key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        verdict = self._cache.get(key)
        if (
            verdict is None
            or verdict.age() >= CREDENTIAL_CACHE_SECONDS
            or not verdict.holds_for(token)
        ):
            # Shielded: a request given up on must not cancel the check others are waiting for.
            verdict = await asyncio.shield(self._check(key, token, password))
            if not verdict.holds_for(token):
                return None  # the token's passwords changed while the check ran
        elif verdict.age() >= CREDENTIAL_REFRESH_SECONDS:
            self._check(key, token, password)
        return verdict.answer(token, datetime.now(UTC))

    def _check(self, key: bytes, token: Token, password: str) -> asyncio.Task[_Verdict]:
        """The check of these credentials in flight, started if there is none."""
        task = self._checking.get(key)
        if task is None:
            task = asyncio.create_task(self._verify(key, token, password))
            self._checking[key] = task
            task.add_done_callback(lambda _: self._checking.pop(key, None))
        return task

    async def _verify(self, key: bytes, token: Token, password: str) -> _Verdict:
        now = datetime.now(UTC)
        for slot in token.passwords:
            if not slot.expired(now) and await self.password_checks.verify(password, slot.hash):
                verdict = _Verdict(slot.name, slot.hash, monotonic())
                break
        else:
            verdict = _Verdict(None, _fingerprint(token), monotonic())
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = verdict
        return verdict

    async def close(self) -> None:
        """Stop the checks in flight and the threads that run them."""
        for task in list(self._checking.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.password_checks.close()


@dataclass(frozen=True)
class _Verdict:
    """What one check of a password found: the slot it matched (None: none) and what it was
    checked against (that slot's hash, or all the token's hashes), at `monotonic()` time `at`."""

    slot: str | None
    checked: str
    at: float

    def age(self) -> float:
        return monotonic() - self.at

    def holds_for(self, token: Token) -> bool:
        """Whether the token still has the passwords this verdict was reached on."""
        if self.slot is None:
            return self.checked == _fingerprint(token)
        return any(s.name == self.slot and s.hash == self.checked for s in token.passwords)

    def answer(self, token: Token, now: datetime) -> Token | None:
        """The token if the password matched a slot that has not expired since; a verdict
        that `holds_for` the token only."""
        if self.slot is None:
            return None
        slot = next(s for s in token.passwords if s.name == self.slot)
        return None if slot.expired(now) else token


@dataclass(frozen=True)
class _ParentScopeMap:
    name: str
    permissions: tuple[Permission, ...]
    gateways: tuple[GatewayPermission, ...]


@dataclass(frozen=True)
class _ParentToken:
    name: str
    status: str
    scope_map: _ParentScopeMap | None
    passwords: tuple[tuple[str, str, str | None], ...]


def _parent_token(entry: Any) -> _ParentToken:
    """One client token of the parent's settings, validated; CredentialError names the fault."""
    try:
        name = validate_resource_name("token", entry["name"])
        status = entry.get("status", "enabled")
        _check_status(status)
        scope = entry.get("scopeMap")
        scope_map = None
        if scope is not None:
            permissions, gateways = _load_all(
                json.dumps(list(scope.get("repositories", [])) + list(scope.get("gateways", [])))
            )
            for permission in permissions:
                validate_pattern(permission.repository)
                validate_actions(tuple(permission.actions))
            scope_map = _ParentScopeMap(
                validate_resource_name("scope map", scope["name"]), permissions, gateways
            )
        passwords = []
        for password in entry.get("passwordHashes", []):
            _check_slot(password["id"])
            if not isinstance(password["hash"], str) or not password["hash"]:
                raise CredentialError(f"{password['id']} has no hash")
            passwords.append((password["id"], password["hash"], password.get("expiry")))
    except CredentialError as err:
        raise CredentialError(f"the parent sent an unusable client token: {err}") from None
    except (KeyError, TypeError, AttributeError, PatternError) as err:
        raise CredentialError(
            f"the parent sent a malformed client token ({type(err).__name__}: {err})"
        ) from None
    return _ParentToken(name, status, scope_map, tuple(passwords))


def _fingerprint(token: Token) -> str:
    return "|".join(p.hash for p in token.passwords)


def _check_editable(kind: str, name: str, origin: str, by_parent: bool) -> None:
    """What the parent sent is the parent's to change: sync would overwrite a local edit."""
    if origin != "local" and not by_parent:
        raise CredentialError(f"{kind} {name!r} came from the parent registry; change it there")


def _check_slot(slot: str) -> None:
    if slot not in PASSWORD_NAMES:
        raise CredentialError(f"password must be one of {', '.join(PASSWORD_NAMES)}")


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise CredentialError(f"status must be one of {', '.join(STATUSES)}")


def _merge(
    current: tuple[Permission | GatewayPermission, ...],
    add: tuple[Permission | GatewayPermission, ...],
    remove: tuple[Permission | GatewayPermission, ...],
) -> list[tuple[str, frozenset[str]]]:
    merged: dict[str, set[str]] = {}
    for p in current:
        merged.setdefault(_target(p), set()).update(p.actions)
    for p in remove:
        if _target(p) in merged:
            merged[_target(p)] -= p.actions
    for p in add:
        merged.setdefault(_target(p), set()).update(p.actions)
    return [(t, frozenset(a)) for t, a in merged.items() if a]


def _target(p: Permission | GatewayPermission) -> str:
    return p.repository if isinstance(p, Permission) else p.registry


def _dump(permissions: tuple[Permission, ...], gateways: tuple[GatewayPermission, ...] = ()) -> str:
    return json.dumps([p.to_json() for p in permissions] + [g.to_json() for g in gateways])


@lru_cache(maxsize=4096)
def _load_all(text: str) -> tuple[tuple[Permission, ...], tuple[GatewayPermission, ...]]:
    # Cached by the stored JSON itself: a scope map that changes is new text, so never stale;
    # auth reads a scope map on every request.
    entries = json.loads(text)
    return (
        tuple(
            Permission(e["repository"], frozenset(e["actions"]))
            for e in entries
            if "repository" in e
        ),
        tuple(
            GatewayPermission(e["gateway"], frozenset(e["actions"]))
            for e in entries
            if "gateway" in e
        ),
    )


def _load(text: str) -> tuple[Permission, ...]:
    return _load_all(text)[0]


def _scope_map(row: tuple) -> ScopeMap:
    name, description, permissions, origin, created, updated = row
    repositories, gateways = _load_all(permissions)
    return ScopeMap(name, description or "", repositories, origin, created, updated, gateways)
