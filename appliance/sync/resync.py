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

from appliance.control.roles import CONNECTED, READ_WRITE
from appliance.storage.store import Store
from appliance.sync.push import RECONCILE


class NotConnected(Exception):
    """Only an activated connected registry has a parent to reconcile with."""


@dataclass(frozen=True)
class Resync:
    pull: bool
    push: list[str]


def request_resync(store: Store) -> Resync:
    node = store.node
    if node.role != CONNECTED:
        raise NotConnected()
    upward = store.repositories_with_local_content() if node.mode == READ_WRITE else []
    with store.transaction():
        node.resync_requested = True
        for repository in upward:
            node.set(RECONCILE + repository, "1")
    return Resync(pull=True, push=upward)
