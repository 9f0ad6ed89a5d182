"""Tokens and scope maps: the rules for making, changing and deleting them, and for taking
what the parent sends. `storage/tokens.py` keeps them; `auth/credential_checks.py` checks
passwords against them.

The model is ACR's: a scope map is a named list of repository permissions; a token names one
scope map, is enabled or disabled, and has two passwords (each with an optional expiry) so a
client can move to a new password before the old one is revoked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import sqlite_utils

from appliance.auth.credential_checks import CredentialChecks
from appliance.auth.passwords import PasswordChecks, generate_password, hash_generated
from appliance.auth.scopes import (
    GatewayPermission,
    PatternError,
    Permission,
    validate_actions,
    validate_pattern,
)
from appliance.storage.timestamps import timestamp, utc_now
from appliance.storage.tokens import PARENT, StoredScopeMap, Token, Tokens

PASSWORD_NAMES = ("password1", "password2")
STATUSES = ("enabled", "disabled")
_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9-]{4,49}")


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
    return timestamp(moment)


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
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.records = Tokens(db)
        self.max_tokens = max_tokens
        self.max_scope_maps = max_scope_maps
        self.max_permissions = max_permissions
        self.password_checks = password_checks or PasswordChecks()
        self.checks = CredentialChecks(self.password_checks, clock)

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
        with self.records.transaction():
            if self.records.scope_map(name) is not None:
                raise CredentialError(f"scope map {name!r} already exists")
            count = self.records.scope_map_count()
            if count >= self.max_scope_maps:
                raise CredentialError(
                    f"this registry already has {count} scope maps, the limit "
                    f"({self.max_scope_maps})"
                )
            self.records.add_scope_map(
                name, description, _dump(permissions, gateways), origin, timestamp()
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
        with self.records.transaction():
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
            self.records.update_scope_map(
                name,
                _dump(permissions, gateways),
                current.description if description is None else description,
                timestamp(),
            )
        return self.scope_map(name)

    def scope_map(self, name: str) -> ScopeMap:
        stored = self.records.scope_map(name)
        if stored is None:
            raise NotFound(f"scope map {name!r} not found")
        return _scope_map(stored)

    def scope_maps(self) -> list[ScopeMap]:
        return [_scope_map(stored) for stored in self.records.scope_maps()]

    def delete_scope_map(self, name: str, by_parent: bool = False) -> None:
        with self.records.transaction():
            current = self.scope_map(name)
            _check_editable("scope map", name, current.origin, by_parent)
            users = self.records.tokens_using(name)
            if users:
                raise CredentialError(
                    f"scope map {name!r} is used by token(s) {', '.join(users[:5])}; "
                    "delete or update them first"
                )
            self.records.delete_scope_map(name)

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
        hashes = {n: hash_generated(pw) for n, pw in passwords.items()}
        with self.records.transaction():
            if self.records.token(name) is not None:
                raise CredentialError(f"token {name!r} already exists")
            self.scope_map(scope_map)
            count = self.records.token_count()
            if count >= self.max_tokens:
                raise CredentialError(
                    f"this registry already has {count} tokens, the limit ({self.max_tokens})"
                )
            now = timestamp()
            self.records.add_token(name, scope_map, status, origin, now, now)
            for slot, hashed in hashes.items():
                self.records.set_password(name, slot, hashed, parse_expiry(expiry), now)
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
        with self.records.transaction():
            token = self.token(name)
            _check_editable("token", name, token.origin, by_parent)
            if scope_map is not None:
                self.scope_map(scope_map)
            self.records.update_token(
                name, scope_map or token.scope_map, status or token.status, timestamp()
            )
        return self.token(name)

    def generate_password(
        self, name: str, slot: str, expiry: str | None = None, by_parent: bool = False
    ) -> str:
        """Replace one of the token's two passwords; the other keeps working."""
        _check_slot(slot)
        password = generate_password()
        hashed = hash_generated(password)
        with self.records.transaction():
            token = self.token(name)
            _check_editable("token", name, token.origin, by_parent)
            self.records.set_password(name, slot, hashed, parse_expiry(expiry), timestamp())
        return password

    def delete_password(self, name: str, slot: str, by_parent: bool = False) -> None:
        _check_slot(slot)
        with self.records.transaction():
            token = self.token(name)
            _check_editable("token", name, token.origin, by_parent)
            if not self.records.delete_password(name, slot):
                raise NotFound(f"token {name!r} has no {slot}")

    def token(self, name: str) -> Token:
        token = self.records.token(name)
        if token is None:
            raise NotFound(f"token {name!r} not found")
        return token

    def tokens(self) -> list[Token]:
        return [self.token(n) for n in self.records.token_names()]

    def delete_token(self, name: str, by_parent: bool = False) -> None:
        with self.records.transaction():
            token = self.token(name)
            _check_editable("token", name, token.origin, by_parent)
            owner = self.records.sync_token_owner(name)
            if owner is not None:
                raise CredentialError(
                    f"token {name!r} is the sync token of connected registry {owner!r}; "
                    "delete the connected registry first"
                )
            self.records.delete_token(name)

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
        with self.records.transaction():
            local_tokens = self.records.local_token_names()
            local_maps = self.records.local_scope_map_names()
            created = self.records.delete_parent_tokens()
            now = timestamp()
            for token in wanted:
                if token.name in local_tokens or (
                    token.scope_map is not None and token.scope_map.name in local_maps
                ):
                    skipped.append(token.name)
                    continue
                if token.scope_map is None:
                    continue
                scope_map = token.scope_map
                self.records.put_parent_scope_map(
                    scope_map.name,
                    "from the parent registry",
                    _dump(scope_map.permissions, scope_map.gateways),
                    now,
                )
                self.records.add_token(
                    token.name,
                    scope_map.name,
                    token.status,
                    PARENT,
                    created.get(token.name, now),
                    now,
                )
                for slot, hashed, expiry in token.passwords:
                    self.records.set_password(token.name, slot, hashed, parse_expiry(expiry), now)
            self.records.delete_unused_parent_scope_maps()
        return skipped

    # -- authentication ------------------------------------------------------------------------

    def permissions_of(self, token_name: str) -> tuple[Permission, ...]:
        grants = self.records.grants(token_name)
        return _load(grants[1]) if grants else ()

    def _enabled_grants(
        self, token_name: str
    ) -> tuple[tuple[Permission, ...], tuple[GatewayPermission, ...]] | None:
        """What an enabled token's scope map grants; None when it is disabled or gone."""
        grants = self.records.grants(token_name)
        if grants is None or grants[0] != "enabled":
            return None
        return _load_all(grants[1])

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
        """The enabled token whose unexpired password this is, else None (`CredentialChecks`
        says what is cached, and for how long)."""
        try:
            token = self.token(name)
        except NotFound:
            return None
        if not token.enabled:
            return None
        return await self.checks.check(token, password)

    async def close(self) -> None:
        """Stop the checks in flight and the threads that run them."""
        await self.checks.close()


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


def _scope_map(stored: StoredScopeMap) -> ScopeMap:
    repositories, gateways = _load_all(stored.permissions)
    return ScopeMap(
        stored.name,
        stored.description or "",
        repositories,
        stored.origin,
        stored.created_at,
        stored.updated_at,
        gateways,
    )
