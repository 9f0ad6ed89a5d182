"""`connected-registry resync` on a device: the next sync reconciles everything, both ways.

The root's `cloud resync NAME` reaches a device through its settings; this is the same request
made on the device itself (an operator who restored a backup, or who suspects the replica). It
writes two kinds of marks and moves nothing:
- `resync_requested`: the next pull ignores the change feed and reconciles every repository in
  scope (tags listed, HEAD per tag, what differs copied); cleared after a clean full run;
- on a ReadWrite device, `push_reconcile/<repo>` for every repository holding content of this
  node's own: push sync compares it all with the parent and pushes what differs (the mark the
  message TTL already uses, PROTOCOL.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.control.hierarchy import READ_WRITE
from appliance.control.node import CONNECTED, NodeState
from appliance.storage.schema import write_transaction
from appliance.storage.store import Origin, Store
from appliance.sync.plan import RESYNC_REQUESTED
from appliance.sync.push import RECONCILE


class NotConnected(Exception):
    """Only an activated connected registry has a parent to reconcile with."""


@dataclass(frozen=True)
class Resync:
    pull: bool
    push: list[str]


def request_resync(store: Store) -> Resync:
    node = NodeState(store)
    if node.role != CONNECTED:
        raise NotConnected()
    upward: list[str] = []
    if node.mode == READ_WRITE:
        upward = [
            row[0]
            for row in store.conn.execute(
                "SELECT DISTINCT r.name FROM repositories r WHERE "
                "EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = r.id AND t.origin != ?) "
                "OR EXISTS (SELECT 1 FROM repository_manifests m "
                "WHERE m.repository_id = r.id AND m.origin != ?) ORDER BY r.name",
                (Origin.PARENT.value, Origin.PARENT.value),
            )
        ]
    with write_transaction(store.db):
        store.set_state(RESYNC_REQUESTED, "1")
        for repository in upward:
            store.set_state(RECONCILE + repository, "1")
    return Resync(pull=True, push=upward)
