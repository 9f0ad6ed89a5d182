"""Making this node a root (`cloud init`, DESIGN.md §7): the admin token and the role, once.

A node that already is a root stays as it is (an imaging pipeline may run `cloud init` on every
boot), unless it is asked for a different login server: that is refused. A connected registry
is never made a root: a root is made on a fresh data directory.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from appliance.auth.scopes import ACTIONS, Permission
from appliance.auth.tokens import Credentials
from appliance.control.node import CLOUD, NodeState
from appliance.storage.store import Store

ADMIN = "cloudadmin"


class RootRefused(Exception):
    """`cloud init` refused, in one line that says why; nothing changed."""


@dataclass(frozen=True)
class Root:
    """The root this node is: `initialized` if this call made it one (then `passwords` holds
    the admin token's passwords, shown once), else it already was (no passwords)."""

    login_server: str | None
    admin_token: str | None
    initialized: bool
    passwords: dict[str, str]


def make_root(
    store: Store, credentials: Credentials, login_server: str | None, listen: tuple[str, int]
) -> Root:
    """Make this node a root reached at `login_server` (default: where it will `listen`, as
    `default_login_server` names it), or say it already is one. `credentials` must be on the
    store's own connection: the admin token and the role are written in one transaction, so a
    refusal leaves the node as it was."""
    state = NodeState(store)
    if state.role == CLOUD:
        current = state.get("login_server")
        if login_server is not None and login_server != current:
            raise RootRefused(
                f"this node is already a root, with login server {current}, not {login_server}; "
                "nothing changed"
            )
        return Root(current, state.get("admin_token"), initialized=False, passwords={})
    if state.role is not None:
        raise RootRefused(
            f"this node is a {state.role} registry ({state.get('name') or 'unnamed'}); a root "
            "is made on a fresh data directory"
        )
    login_server = login_server or default_login_server(*listen)
    with store.transaction():
        credentials.create_scope_map(
            ADMIN, (Permission("**", frozenset(ACTIONS)),), "admin of this root"
        )
        _, passwords = credentials.create_token(ADMIN, ADMIN)
        state.set("role", CLOUD)
        state.set("login_server", login_server)
        state.set("admin_token", ADMIN)
    return Root(login_server, ADMIN, initialized=True, passwords=passwords)


def default_login_server(host: str, port: int) -> str:
    """The login server of a root listening on `host:port`, with this host's name where that is
    every address (a device can't dial 0.0.0.0)."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}"
