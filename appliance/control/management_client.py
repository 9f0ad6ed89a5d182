"""Managing the connected registries of a root: one interface, two ways to reach the root.

`LocalManagement` works on the root's own database (what `cloud …` does on the root itself, and
what the management API's handlers call); `RemoteManagement` sends the same operations to a
root's management API (`/manage/v1/connected-registries`) with the admin token's credentials,
over the one transport (transport.py: trust, proxies, timeouts). Both take and return the API's
JSON shapes, so a caller renders one thing whichever way it went, and both refuse with
`HierarchyError` (message, code, HTTP status).
"""

from __future__ import annotations

import asyncio
import json
import re
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from appliance.auth.certificates import CertificateError, ca_fingerprint
from appliance.auth.tokens import PASSWORD_NAMES, CredentialError, NotFound
from appliance.control.connection_string import (
    ConnectionString,
    ConnectionStringError,
    is_loopback,
    parse_endpoint,
)
from appliance.control.hierarchy import INVALID, Hierarchy, HierarchyError
from appliance.control.node import NodeState
from appliance.storage.store import Store
from appliance.transport import (
    Peer,
    PeerError,
    Transport,
    Unreachable,
    first_error,
    read_ca_file,
)

API_PATH = "manage/v1/connected-registries"
PROTOCOLS = ("https", "http")
_HAS_PORT = re.compile(r":[0-9]+$")
# What ACR prints in place of a password it did not generate.
PASSWORD_PLACEHOLDER = "<use --generate-password to generate a new password>"

# Body fields → Hierarchy keyword arguments, with the JSON type each must have.
CREATE_FIELDS: dict[str, tuple[str, type]] = {
    "name": ("name", str),
    "repositories": ("repositories", list),
    "mode": ("mode", str),
    "parent": ("parent", str),
    "clientTokens": ("client_tokens", list),
    "syncSchedule": ("sync_schedule", str),
    "syncWindow": ("sync_window", str),
    "messageTtl": ("message_ttl", str),
    "logLevel": ("log_level", str),
    "tagInclude": ("tag_include", str),
    "tagExclude": ("tag_exclude", str),
    "tagSemver": ("tag_semver", str),
}
UPDATE_FIELDS: dict[str, tuple[str, type]] = {
    "syncSchedule": ("sync_schedule", str),
    "syncWindow": ("sync_window", str),
    "messageTtl": ("message_ttl", str),
    "logLevel": ("log_level", str),
    "addClientTokens": ("add_client_tokens", list),
    "removeClientTokens": ("remove_client_tokens", list),
    # "" removes the filter.
    "tagInclude": ("tag_include", str),
    "tagExclude": ("tag_exclude", str),
    "tagSemver": ("tag_semver", str),
}
IMMUTABLE = ("name", "mode", "parent", "repositories")

Json = dict[str, Any]


class Management(ABC):
    """`az acr connected-registry`'s operations on one root."""

    @abstractmethod
    def create(self, body: Json) -> Json: ...

    @abstractmethod
    def list(self, parent: str | None = None, no_children: bool = False) -> list[Json]: ...

    @abstractmethod
    def show(self, name: str) -> Json: ...

    @abstractmethod
    def update(self, name: str, body: Json) -> Json: ...

    @abstractmethod
    def delete(self, name: str, cleanup: bool = False) -> list[str]:
        """The commands that finish the clean-up by hand (none with `cleanup`)."""

    @abstractmethod
    def deactivate(self, name: str) -> Json: ...

    @abstractmethod
    def get_settings(
        self, name: str, parent_protocol: str, generate_password: int | None = None
    ) -> Json: ...

    @abstractmethod
    def client_tokens(self, name: str) -> list[Json]: ...

    @abstractmethod
    def permissions(self, name: str) -> Json:
        """The sync scope map of `name`."""

    @abstractmethod
    def update_permissions(self, name: str, add: list[str], remove: list[str]) -> Json: ...

    @abstractmethod
    def resync(self, name: str) -> Json: ...


def _arguments(body: Any, fields: dict[str, tuple[str, type]], what: str) -> dict[str, Any]:
    """A JSON body as keyword arguments; unknown fields and wrong types are refused by name."""
    if not isinstance(body, dict):
        raise HierarchyError(INVALID, f"the {what} body must be a JSON object")
    arguments: dict[str, Any] = {}
    for key, value in body.items():
        if key not in fields:
            if key in IMMUTABLE:
                raise HierarchyError(
                    INVALID, f"{key} can't be changed after the connected registry is made"
                )
            raise HierarchyError(
                INVALID, f"unknown field {key!r}; the fields are {', '.join(fields)}"
            )
        if value is None:
            continue
        argument, kind = fields[key]
        if not isinstance(value, kind) or (
            kind is list and not all(isinstance(v, str) for v in value)
        ):
            expected = "a list of strings" if kind is list else "a string"
            raise HierarchyError(INVALID, f"{key} must be {expected}")
        arguments[argument] = value
    return arguments


@contextmanager
def _as_hierarchy_errors():
    """Token and certificate refusals in the one error type callers handle."""
    try:
        yield
    except NotFound as err:
        raise HierarchyError("NAME_UNKNOWN", str(err), 404) from None
    except (CredentialError, CertificateError, ConnectionStringError) as err:
        raise HierarchyError(INVALID, str(err)) from None


class LocalManagement(Management):
    """The operations on this root's database. `store` must be the one `hierarchy` writes
    (one connection: Hierarchy's transactions contain the token writes)."""

    def __init__(self, hierarchy: Hierarchy, store: Store) -> None:
        self.hierarchy = hierarchy
        self.credentials = hierarchy.credentials
        self.store = store
        self.state = NodeState(store)

    def create(self, body: Json) -> Json:
        arguments = _arguments(body, CREATE_FIELDS, "create")
        if "name" not in arguments:
            raise HierarchyError(INVALID, "a connected registry needs a name")
        self._refuse_admin_token(arguments.get("client_tokens", []))
        with _as_hierarchy_errors():
            return self.hierarchy.to_json(self.hierarchy.create(**arguments))

    def _refuse_admin_token(self, client_tokens: list[str]) -> None:
        # Client tokens travel to the device with their password hashes and scope maps: the
        # root's admin credential must never leave the root.
        admin = self.state.get("admin_token")
        if admin in client_tokens:
            raise HierarchyError(
                INVALID, f"{admin!r} is this root's admin token, not a client token"
            )

    def list(self, parent: str | None = None, no_children: bool = False) -> list[Json]:
        return [self.hierarchy.to_json(cr) for cr in self.hierarchy.list(parent, no_children)]

    def show(self, name: str) -> Json:
        return self.hierarchy.to_json(self.hierarchy.get(name))

    def update(self, name: str, body: Json) -> Json:
        arguments = _arguments(body, UPDATE_FIELDS, "update")
        self._refuse_admin_token(arguments.get("add_client_tokens", []))
        with _as_hierarchy_errors():
            return self.hierarchy.to_json(self.hierarchy.update(name, **arguments))

    def delete(self, name: str, cleanup: bool = False) -> list[str]:
        with _as_hierarchy_errors():
            return self.hierarchy.delete(name, cleanup=cleanup)

    def deactivate(self, name: str) -> Json:
        self.hierarchy.deactivate(name)
        return self.show(name)

    def get_settings(
        self, name: str, parent_protocol: str, generate_password: int | None = None
    ) -> Json:
        """The connection string of PROTOCOL.md §1. Everything is checked before a password is
        rotated, so a refused call leaves the device's current password working."""
        if parent_protocol not in PROTOCOLS:
            raise HierarchyError(
                INVALID, f"parentProtocol must be https or http, not {parent_protocol!r}"
            )
        # `True` is an int in Python, and not a password number.
        if generate_password is not None and (
            isinstance(generate_password, bool) or generate_password not in (1, 2)
        ):
            raise HierarchyError(INVALID, "generatePassword must be 1, 2 or null")
        cr = self.hierarchy.get(name)
        endpoint = self._parent_endpoint(cr.parent)
        with _as_hierarchy_errors():
            host, port = parse_endpoint(endpoint)
        if parent_protocol == "http" and not is_loopback(host):
            raise HierarchyError(
                INVALID,
                f"parent protocol http is only allowed for a loopback parent, and {endpoint} is "
                "not one: use https"
            )
        fingerprint = None
        layout = self.store.layout
        # Only the root's own CA is known here; a connected parent's chain is the device's
        # business (system trust or its own CA file).
        if parent_protocol == "https" and cr.parent is None and layout.tls_ca_cert.exists():
            with _as_hierarchy_errors():
                fingerprint = ca_fingerprint(layout)
        password = None
        slot = None
        if generate_password is not None:
            slot = PASSWORD_NAMES[generate_password - 1]
            with _as_hierarchy_errors():
                password = self.credentials.generate_password(cr.sync_token, slot)
        connection = ConnectionString(
            cr.name,
            cr.sync_token,
            password or PASSWORD_PLACEHOLDER,
            host,
            port,
            parent_protocol,
            fingerprint,
        )
        return {
            "connectionString": str(connection),
            "connectedRegistryName": cr.name,
            "syncTokenName": cr.sync_token,
            "syncTokenPassword": password,
            "syncTokenPasswordName": slot,
            "parentGatewayEndpoint": connection.endpoint,
            "parentEndpointProtocol": parent_protocol,
            "parentCertificateFingerprint": fingerprint,
        }

    def _parent_endpoint(self, parent: str | None) -> str:
        if parent is None:
            login_server = self.state.get("login_server")
            if not login_server:
                raise HierarchyError(
                    INVALID,
                    "this root has no login server: run `connected-registry cloud init "
                    "--login-server HOST:PORT`"
                )
            return login_server
        login_server = self.hierarchy.get(parent).login_server
        if not login_server:
            raise HierarchyError(
                "PARENT_NOT_ACTIVATED",
                f"parent {parent!r} has not reported a login server yet: activate the parent "
                "first, then get the settings of its children",
                409,
            )
        # A device reports HOST or HOST:PORT; without a port it serves HTTPS's.
        return login_server if _HAS_PORT.search(login_server) else f"{login_server}:443"

    def client_tokens(self, name: str) -> list[Json]:
        tokens = []
        for token in self.hierarchy.get(name).client_tokens:
            try:
                tokens.append(self.credentials.token(token).to_json())
            except NotFound:
                # Deleted after it was named here: the device refuses it; say so, don't hide it.
                tokens.append({"name": token, "status": "missing"})
        return tokens

    def permissions(self, name: str) -> Json:
        cr = self.hierarchy.get(name)
        with _as_hierarchy_errors():
            return self.credentials.scope_map(cr.sync_token).to_json()

    def update_permissions(self, name: str, add: list[str], remove: list[str]) -> Json:
        if not add and not remove:
            raise HierarchyError(
                INVALID, "nothing to change: give repositories to add or to remove"
            )
        with _as_hierarchy_errors():
            self.hierarchy.update_permissions(name, add, remove)
        return self.permissions(name)

    def resync(self, name: str) -> Json:
        return self.hierarchy.to_json(self.hierarchy.request_resync(name))


def check_root_url(url: str) -> URL:
    """The root's URL, refused (ValueError) where the admin password would travel in clear."""
    parsed = URL(url)
    if parsed.scheme not in PROTOCOLS or not parsed.host:
        raise ValueError(f"{url!r} is not an http(s)://HOST[:PORT] URL")
    if parsed.scheme == "http" and not is_loopback(parsed.host):
        raise ValueError(
            f"{url!r}: the admin password only goes over plain http to a loopback address; "
            "use https"
        )
    return parsed


class RemoteManagement(Management):
    """The operations sent to a root's management API. Each call is one HTTP request."""

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        ca_file: Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.base = check_root_url(url).with_path(f"/{API_PATH}")
        self.headers = {"Authorization": aiohttp.encode_basic_auth(username, password)}
        self.ca_file = ca_file
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def _url(self, *segments: str) -> URL:
        url = self.base
        for segment in segments:
            url = url / segment  # yarl quotes each segment, '/' included
        return url

    def _call(
        self,
        method: str,
        url: URL,
        body: Json | None = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        return asyncio.run(self._request(method, url, body, query))

    async def _request(
        self, method: str, url: URL, body: Json | None, query: dict[str, str] | None
    ) -> Any:
        ca_pem = None
        if self.ca_file is not None:
            try:
                ca_pem = read_ca_file(self.ca_file)
            except ValueError as err:
                raise HierarchyError(INVALID, str(err)) from None
        headers = dict(self.headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            async with Transport(
                str(url.origin()), root_peer(str(url.origin())), self.timeout, ca_pem
            ) as transport:
                status, _, answer = await transport.fetch(
                    method, url, headers, (lambda: payload) if payload else None, params=query
                )
        except PeerError as err:
            unreachable = isinstance(err, Unreachable)
            raise HierarchyError(err.code, err.message, 503 if unreachable else 502) from None
        if status >= 400:
            raise _refusal(status, answer, url)
        try:
            data = json.loads(answer) if answer else None
        except ValueError:
            data = None
        if data is None:
            raise HierarchyError("UNKNOWN", f"{url.origin()} answered {status} without JSON", 502)
        return data

    def create(self, body: Json) -> Json:
        return self._call("POST", self.base, body)

    def list(self, parent: str | None = None, no_children: bool = False) -> list[Json]:
        query = {}
        if parent is not None:
            query["parent"] = parent
        if no_children:
            query["noChildren"] = "true"
        return self._call("GET", self.base, query=query)

    def show(self, name: str) -> Json:
        return self._call("GET", self._url(name))

    def update(self, name: str, body: Json) -> Json:
        return self._call("PATCH", self._url(name), body)

    def delete(self, name: str, cleanup: bool = False) -> list[str]:
        query = {"cleanup": "true"} if cleanup else None
        return self._call("DELETE", self._url(name), query=query)["commands"]

    def deactivate(self, name: str) -> Json:
        return self._call("POST", self._url(name, "deactivate"))

    def get_settings(
        self, name: str, parent_protocol: str, generate_password: int | None = None
    ) -> Json:
        body = {"parentProtocol": parent_protocol, "generatePassword": generate_password}
        return self._call("POST", self._url(name, "get-settings"), body)

    def client_tokens(self, name: str) -> list[Json]:
        return self._call("GET", self._url(name, "client-tokens"))

    def permissions(self, name: str) -> Json:
        return self._call("GET", self._url(name, "permissions"))

    def update_permissions(self, name: str, add: list[str], remove: list[str]) -> Json:
        return self._call("PATCH", self._url(name, "permissions"), {"add": add, "remove": remove})

    def resync(self, name: str) -> Json:
        return self._call("POST", self._url(name, "resync"))


def root_peer(origin: str) -> Peer:
    """A root's management API at `origin` (scheme://host:port), in the words of its errors."""
    return Peer(
        name=f"the root at {origin}",
        unreachable="UNREACHABLE",
        untrusted="UNTRUSTED_ROOT",
        trust_hint="give --ca-file with the root's CA certificate",
        plain_http_hint="write its URL with http://, or serve it with TLS",
    )


def _refusal(status: int, answer: bytes, url: URL) -> HierarchyError:
    """The API's `{"errors": [{code, message}]}` as a HierarchyError."""
    error = first_error(answer)
    if error is not None:
        code, message = error
        return HierarchyError(code, message, status)
    if status == 404:
        return HierarchyError(
            "NAME_UNKNOWN", f"{url.origin()} has no management API: is it a root?", 404
        )
    return HierarchyError("UNKNOWN", f"{url.origin()} answered {status}", status)
