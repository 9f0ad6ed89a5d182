"""Activation, device side: claim a connected registry on its parent, then become it.

`activate` claims first and writes nothing before the parent accepts (DESIGN.md §7): what it
needs from the data directory (the instance id, whether the node is already activated) is read
without opening the store for writing, and a data directory that does not exist is not created
until the parent has said yes. So a refused or failed activation leaves the directory as it
found it. A data directory keeps one `instanceId` for life: an existing one is reused, a new one
is made in memory and stored with the rest of the state on success.

On success, in this order: the node state (role, name, mode, parent, sync token name, settings
and ETag, login server, instance id, activation time), the sync token's password
(`secrets/sync-token`, 0600), the parent's CA anchor (`tls/parent-ca.crt`, when pinned or given
with `--ca-file`), the client tokens of the settings (origin 'parent'), and a TLS certificate for
the host name and the login server's host unless the node has one or the config names one. If
writing fails after the claim, the claim is released (best effort) so a retry is not locked out.

Re-running on a node already active for the same registry and parent changes nothing and needs
no network. An operator who deactivated the registry on the root runs
`connected-registry deactivate --force` on the device, then `activate` again.

`deactivate` tells the parent first (the active instance releases its claim), then clears the
node's role and parent state; content, tokens and the instance id stay.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance import __version__
from appliance.auth.certificates import CertificateError, Host, IssuedCertificates, issue
from appliance.auth.certificates import parse_host as parse_certificate_host
from appliance.auth.tokens import CredentialError, Credentials
from appliance.control.connection_string import ConnectionString, port_number
from appliance.control.descendants import served_tokens
from appliance.control.gateway_client import (
    GatewayClient,
    GatewayError,
    Settings,
    pinned_anchor,
    read_ca_file,
)
from appliance.control.node import CLOUD, CONNECTED, NodeState, SyncCredential
from appliance.control.roles import MODES, READ_WRITE
from appliance.storage.files import write_file
from appliance.storage.layout import Layout, existing_state
from appliance.storage.store import Store
from appliance.storage.timestamps import timestamp

HTTPS_PORT = 443
# What activation writes to node_state, and deactivation clears (instance_id stays for life).
PARENT_STATE = (
    "role",
    "name",
    "mode",
    "parent_endpoint",
    "parent_protocol",
    "parent_fingerprint",
    "sync_token",
    "settings",
    "settings_etag",
    "activated_at",
)


class ActivationError(Exception):
    """A refusal on this side (the parent's refusals are `GatewayError`): `code: message`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Activation:
    """What `activate` did, for the command to tell the operator."""

    name: str
    mode: str
    instance_id: str
    login_server: str
    parent: str
    data_dir: Path
    already_active: bool
    certificates: IssuedCertificates | None = None
    skipped_tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class Deactivation:
    name: str
    parent: str
    parent_told: bool
    parent_error: str | None = None


def default_login_server(hostname: str | None = None) -> str:
    return f"{hostname or socket.gethostname()}:{HTTPS_PORT}"


def parse_login_server(text: str) -> str:
    """HOST[:PORT] clients use to reach this node (a DNS name or IP address; IPv6 in
    brackets); ValueError naming the problem."""
    text = text.strip()
    shown = repr(text if len(text) <= 80 else f"{text[:80]}…")
    host = login_server_host(text)
    rest = text.removeprefix(f"[{host}]" if text.startswith("[") else host)
    if rest and not rest.startswith(":"):
        raise ValueError(f"login server {shown} must be HOST or HOST:PORT")
    if rest and port_number(rest[1:]) is None:
        raise ValueError(f"login server {shown}: the port must be a number from 1 to 65535")
    try:
        parse_certificate_host(host)
    except ValueError:
        raise ValueError(
            f"login server {shown}: the host is not a DNS name or an IP address"
        ) from None
    return text


def login_server_port(login_server: str) -> int:
    """The port of HOST[:PORT]; 443 when none is written."""
    host = login_server_host(login_server)
    rest = login_server.removeprefix(f"[{host}]" if login_server.startswith("[") else host)
    return port_number(rest[1:]) or HTTPS_PORT


def login_server_host(login_server: str) -> str:
    """The host of HOST[:PORT] or [IPv6][:PORT]."""
    if login_server.startswith("["):
        return login_server[1:].partition("]")[0]
    host, sep, port = login_server.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else login_server


async def parent_anchor(connection: ConnectionString, ca_file: Path | None) -> bytes | None:
    """The PEM certificate(s) to verify the parent against: pinned by the connection string's
    fingerprint, or read from `ca_file`; None for the system store (and for http)."""
    if connection.protocol != "https":
        return None
    if connection.fingerprint:
        return await pinned_anchor(
            connection.host, connection.port, connection.base_url, connection.fingerprint
        )
    if ca_file is not None:
        return read_ca_file(ca_file)
    return None


async def activate(
    data_dir: Path,
    connection: ConnectionString,
    login_server: str | None = None,
    ca_file: Path | None = None,
    make_certificate: bool = True,
    hostname: str | None = None,
) -> Activation:
    """Claim `connection`'s registry for this data directory and write its state.

    The parent is trusted as `parent_anchor` says. Raises ActivationError for a
    refusal on this side and GatewayError for the parent's (ParentUnreachable when there was no
    answer); either way nothing has been written.
    """
    layout = Layout(data_dir)
    state = existing_state(layout)
    hostname = hostname or socket.gethostname()
    login_server = login_server or state.get("login_server") or default_login_server(hostname)
    parent = connection.base_url
    if state.get("role") == CLOUD:
        raise ActivationError(
            "DENIED", f"{data_dir} is a root (cloud init); a root has no parent to activate with"
        )
    if state.get("role") == CONNECTED:
        same = (
            state.get("name") == connection.registry_name
            and state.get("parent_endpoint") == connection.endpoint
        )
        if not same:
            raise ActivationError(
                "NODE_ACTIVATED",
                f"this node is already activated as {state.get('name')!r} of "
                f"{state.get('parent_endpoint')}; run `connected-registry deactivate` first",
            )
        return Activation(
            name=state["name"],
            mode=state.get("mode", READ_WRITE),
            instance_id=state.get("instance_id", ""),
            login_server=state.get("login_server", login_server),
            parent=parent,
            data_dir=data_dir,
            already_active=True,
        )
    instance_id = state.get("instance_id") or uuid.uuid4().hex
    anchor = await parent_anchor(connection, ca_file)
    client = GatewayClient(
        parent, connection.registry_name, connection.token_name, connection.password, anchor
    )
    async with client:
        settings = await client.activate(instance_id, __version__, login_server, hostname)
        try:
            return _become(
                layout,
                connection,
                settings,
                instance_id,
                login_server,
                anchor,
                [hostname, login_server_host(login_server)] if make_certificate else [],
            )
        except BaseException:
            # The parent holds a claim for an instance id that may never have been stored.
            with contextlib.suppress(GatewayError):
                await client.deactivate(instance_id)
            raise


def _become(
    layout: Layout,
    connection: ConnectionString,
    settings: Settings,
    instance_id: str,
    login_server: str,
    anchor: bytes | None,
    certificate_hosts: list[str],
) -> Activation:
    mode = settings.body.get("mode")
    if mode not in MODES:
        raise ActivationError("UNEXPECTED_RESPONSE", f"the parent sent no valid mode: {mode!r}")
    # Client tokens, and the sync tokens of children created before this activation.
    tokens = served_tokens(settings.body)
    try:
        store = Store(layout.root)
    except (OSError, sqlite3.Error) as err:
        raise ActivationError("DENIED", f"cannot create the data directory: {err}") from None
    try:
        node = NodeState(store)
        values = {
            "instance_id": instance_id,
            "role": CONNECTED,
            "name": connection.registry_name,
            "mode": mode,
            "parent_endpoint": connection.endpoint,
            "parent_protocol": connection.protocol,
            "sync_token": connection.token_name,
            "settings": json.dumps(settings.body, sort_keys=True),
            "login_server": login_server,
            "activated_at": timestamp(),
        }
        if settings.etag:
            values["settings_etag"] = settings.etag
        if connection.fingerprint:
            values["parent_fingerprint"] = connection.fingerprint
        try:
            skipped = Credentials(store.db).replace_from_parent(tokens)
        except CredentialError as err:
            raise ActivationError("UNEXPECTED_RESPONSE", str(err)) from None
        node.write_sync_credential(SyncCredential(connection.token_name, connection.password))
        _write_anchor(layout, anchor)
        certificates = _certificate(layout, certificate_hosts)
        # The role goes last: a node is activated only once everything it needs is in place.
        with store.transaction():
            store.node.delete("parent_fingerprint", "settings_etag")
            for key, value in values.items():
                node.set(key, value)
    finally:
        store.close()
    return Activation(
        name=connection.registry_name,
        mode=mode,
        instance_id=instance_id,
        login_server=login_server,
        parent=connection.base_url,
        data_dir=layout.root,
        already_active=False,
        certificates=certificates,
        skipped_tokens=tuple(skipped),
    )


def _write_anchor(layout: Layout, anchor: bytes | None) -> None:
    """Store the parent's CA anchor; with none, remove a stale one so the system store rules."""
    if anchor is None:
        layout.parent_ca_cert.unlink(missing_ok=True)
        return
    layout.tls.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_file(layout.parent_ca_cert, anchor, 0o644)


def _certificate(layout: Layout, hosts: list[str]) -> IssuedCertificates | None:
    """A server certificate for `hosts`, unless there is one already (or none is wanted)."""
    if not hosts or layout.tls_server_cert.exists():
        return None
    parsed: list[Host] = []
    for text in hosts:
        with contextlib.suppress(ValueError):
            host = parse_certificate_host(text)
            if host not in parsed:
                parsed.append(host)
    if not parsed:
        return None
    try:
        return issue(layout, parsed)
    except CertificateError as err:
        raise ActivationError("DENIED", f"cannot make a TLS certificate: {err}") from None


async def deactivate(data_dir: Path, force: bool = False) -> Deactivation:
    """Release this node's claim on the parent, then forget the parent. With `force`, a parent
    that cannot be reached or refuses is reported and the node forgets it anyway."""
    layout = Layout(data_dir)
    state = existing_state(layout)
    if state.get("role") != CONNECTED:
        raise ActivationError("NOT_ACTIVATED", f"{data_dir} is not an activated connected registry")
    store = Store(data_dir)
    try:
        parent = f"{state.get('parent_protocol')}://{state.get('parent_endpoint')}"
        parent_error: str | None = None
        try:
            async with GatewayClient.for_node(store) as client:
                await client.deactivate(state["instance_id"])
        except (GatewayError, KeyError) as err:
            if not force:
                code, message = (
                    (err.code, err.message) if isinstance(err, GatewayError) else ("", str(err))
                )
                raise ActivationError(
                    code or "NOT_ACTIVATED",
                    f"{message}; give --force to deactivate this node anyway",
                ) from None
            parent_error = str(err)
        store.node.delete(*PARENT_STATE)
        NodeState(store).sync_credential_path.unlink(missing_ok=True)
        layout.parent_ca_cert.unlink(missing_ok=True)
    finally:
        store.close()
    return Deactivation(state.get("name", ""), parent, parent_error is None, parent_error)
