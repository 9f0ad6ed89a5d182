"""Whether this node is a root or an activated connected registry, for the units that start
only on one (`connected-registry.service`, the sync timer) or only on neither (first boot)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from appliance.control.roles import CLOUD, CONNECTED
from appliance.storage.layout import Layout, existing_state


@dataclass(frozen=True)
class NodeRole:
    role: str | None
    """'cloud', 'connected', or None for a node that is neither (yet)."""
    explanation: str
    """One line for `systemctl status`: what the node is, or why it is not ready to serve."""


def node_role(data_dir: Path) -> NodeRole:
    """Read the role from the data directory without changing anything in it."""
    layout = Layout(data_dir)
    if not layout.database.exists():
        return NodeRole(
            None,
            f"not activated: no registry in {data_dir} yet; run `connected-registry activate` "
            "(or `connected-registry cloud init` on a root)",
        )
    if not os.access(layout.database, os.R_OK):
        return NodeRole(None, f"cannot read {layout.database}: it must belong to the service user")
    state = existing_state(layout)
    role = state.get("role")
    if role == CLOUD:
        return NodeRole(CLOUD, f"a root (cloud init), login server {state.get('login_server')}")
    if role == CONNECTED:
        return NodeRole(
            CONNECTED,
            f"activated as {state.get('name')} (parent {state.get('parent_endpoint')})",
        )
    return NodeRole(
        None,
        f"not activated: {data_dir} holds a registry that is neither activated nor a root; run "
        "`connected-registry activate` (or `connected-registry cloud init` on a root)",
    )


def nothing_to_sync(role: str | None, data_dir: Path, has_upstreams: bool) -> str | None:
    """None when a node has something to sync from: a parent (it is an activated connected
    registry) or [[upstream]]s in its config; else one line saying why a sync has nothing to do
    (a root, or a node not activated or deactivated, without upstreams)."""
    if role == CONNECTED or has_upstreams:
        return None
    if role == CLOUD:
        return f"nothing to sync from: {data_dir} is a root and its config has no [[upstream]]"
    return (
        f"NOT_ACTIVATED: {data_dir} is not an activated connected registry and its config has "
        "no [[upstream]]: nothing to sync from"
    )
