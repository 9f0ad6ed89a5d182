"""The registries below a connected registry, as its parent's settings describe them.

The settings a parent sends (kept in node state) nest each descendant's settings under
`descendants`; these read them: who is below, with which sync token, allowed what, and which
tokens this node's `/v2/` checks (`served_tokens`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any


def descendants(settings: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """Every descendant's settings in `settings` (this node's), depth first."""
    for child in (settings or {}).get("descendants") or []:
        if isinstance(child, dict):
            yield child
            yield from descendants(child)


def find_descendant(settings: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    for entry in descendants(settings):
        if str(entry.get("name", "")).lower() == name.lower():
            return entry
    return None


def served_tokens(settings: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The tokens this node's `/v2/` checks from its parent's settings: the client tokens, and
    each child's sync token (the child pulls, and a ReadWrite child pushes, with it here). Only
    children: a deeper descendant talks to its own parent."""
    tokens = list((settings or {}).get("clientTokens") or [])
    for child in (settings or {}).get("descendants") or []:
        if isinstance(child, dict) and isinstance(child.get("syncToken"), dict):
            tokens.append(child["syncToken"])
    return tokens


def find_sync_token(settings: dict[str, Any] | None, token: str) -> dict[str, Any] | None:
    for entry in descendants(settings):
        sync_token = entry.get("syncToken")
        if isinstance(sync_token, dict) and sync_token.get("name") == token:
            return sync_token
    return None


def granted(sync_token: dict[str, Any], registry: str) -> frozenset[str]:
    """The gateway actions the token's scope map grants on `registry`."""
    actions: set[str] = set()
    for gateway in (sync_token.get("scopeMap") or {}).get("gateways") or []:
        if isinstance(gateway, dict) and str(gateway.get("gateway", "")).lower() == registry:
            actions.update(a for a in gateway.get("actions") or [] if isinstance(a, str))
    return frozenset(actions)


def unexpired_hashes(sync_token: dict[str, Any], now: datetime) -> list[str]:
    """The password hashes of `sync_token` that have not expired at `now`."""
    hashes = []
    for password in sync_token.get("passwordHashes") or []:
        if not isinstance(password, dict) or not isinstance(password.get("hash"), str):
            continue
        expiry = password.get("expiry")
        if expiry is not None:
            try:
                moment = datetime.fromisoformat(str(expiry).replace("Z", "+00:00"))
            except ValueError:
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            if moment <= now:
                continue
        hashes.append(password["hash"])
    return hashes
