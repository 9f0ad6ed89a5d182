"""The change feed's rules (PROTOCOL.md §3): what one child sees of it, and how long rows stay.

A root answers the feed for every registry of its hierarchy; a connected registry answers it
for its descendants from its own table (a child pulls its content from this node, so this
node's feed is the one it needs, whether the parent is reachable or not). Rows older than the
longest `messageTtl` that matters are pruned at startup and hourly: on a root, that of the
hierarchy (`prune_changes`); on a connected registry, that of its cached descendants
(`prune_changes_for_descendants`). The newest row always stays (storage/feed.py).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from appliance.auth.scopes import matches
from appliance.control.descendants import descendants
from appliance.control.hierarchy import Hierarchy
from appliance.control.node import CLOUD, CONNECTED, NodeState
from appliance.control.schedule import DEFAULT_TTL, ScheduleError, parse_duration
from appliance.storage.feed import Change, ChangeFeed
from appliance.storage.store import Store

log = logging.getLogger(__name__)

# Changes per answer, and how many rows one answer scans at most (out-of-scope rows are
# skipped, not returned).
CHANGES_PAGE = 1000
MAX_SCANNED = 20 * CHANGES_PAGE
PRUNE_EVERY = 3600.0


def read_changes(feed: ChangeFeed, scope: tuple[str, ...], cursor: int) -> dict[str, Any]:
    """The feed after `cursor` for a child whose repositories are `scope` (names or patterns).

    `reset` when the child must reconcile fully: a first call (cursor 0), a cursor older than
    the oldest row kept, or one ahead of the newest (this node's database was replaced). The
    answer's cursor is the last row looked at, so rows outside the scope are not looked at
    again; `more` says the child should ask again at once."""
    oldest, newest = feed.bounds()
    current = newest or 0
    if cursor <= 0 or cursor > current or (oldest is not None and oldest > cursor + 1):
        return {"cursor": current, "reset": True, "changes": [], "more": False}
    found: list[Change] = []
    position = cursor
    for change in feed.after(cursor, current, MAX_SCANNED):
        position = change.seq
        if any(matches(entry, change.repository) for entry in scope):
            found.append(change)
            if len(found) >= CHANGES_PAGE:
                break
    changes = [change.to_json() for change in found]
    return {"cursor": position, "reset": False, "changes": changes, "more": position < current}


def prune_changes(hierarchy: Hierarchy, now: datetime | None = None) -> int:
    """On a root: drop feed rows older than the longest messageTtl of the connected registries
    (the default TTL when there are none); the newest row always stays. How many went."""
    return _prune(hierarchy.store.feed, [cr.message_ttl for cr in hierarchy.all()], now)


def prune_changes_for_descendants(store: Store, now: datetime | None = None) -> int:
    """On a connected registry: the same, by the longest messageTtl of its descendants in the
    cached settings (the feed is served to them alone; the default TTL when there are none)."""
    ttls = [str(entry.get("messageTtl")) for entry in descendants(NodeState(store).settings())]
    return _prune(store.feed, ttls, now)


def _prune(feed: ChangeFeed, ttls: list[str], now: datetime | None) -> int:
    durations = [d for d in (_duration(ttl) for ttl in ttls) if d]
    longest = max(durations) if durations else parse_duration(DEFAULT_TTL, "message TTL")
    return feed.prune((now or datetime.now(UTC)) - longest)


def _duration(text: str) -> timedelta | None:
    try:
        return parse_duration(text, "message TTL")
    except ScheduleError:
        return None


async def prune_periodically(store: Store, hierarchy: Hierarchy) -> None:
    """At startup and every PRUNE_EVERY seconds, on a root or a connected registry (a service
    lifetime task)."""
    while True:
        try:
            role = store.node.role
            removed = 0
            if role == CLOUD:
                removed = prune_changes(hierarchy)
            elif role == CONNECTED:
                removed = prune_changes_for_descendants(store)
            if removed:
                log.info("pruned %d change feed row(s) past the message TTL", removed)
        except Exception:  # the loop must outlive one bad round (a locked database); log why
            log.exception("pruning the change feed failed")
        await asyncio.sleep(PRUNE_EVERY)
