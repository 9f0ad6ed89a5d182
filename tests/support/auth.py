"""Shared pieces of the access-control tests: a server with auth on, tokens made through the
Python API on its data directory, the token endpoint, JWT inspection, and refusal checks.

Tokens and scope maps are written straight into the running server's database (SQLite WAL: the
server sees them at once), the way `connected-registry token create` on the device does.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from appliance.auth.scopes import ACTIONS
from appliance.auth.tokens import Credentials, parse_permissions
from appliance.storage.store import Store
from support.oci import OCI_MANIFEST, Image, descriptor, make_image, push_image
from support.server import RegistryProcess

AUTH_ARGS = ["--auth", "--insecure-http"]
ALL_ACTIONS: tuple[str, ...] = ACTIONS
READER: tuple[str, ...] = ("content/read", "metadata/read")
SIGNATURE_TYPE = "application/vnd.example.signature.v1"

SPEC_ERROR_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
    "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS",
})


# -- credentials ----------------------------------------------------------------------------------


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def bearer(token: str) -> str:
    return f"Bearer {token}"


@dataclass(frozen=True)
class TokenCreds:
    """A token made for a test: its name, both passwords and what its scope map allows."""

    name: str
    password1: str
    password2: str
    permissions: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def header(self) -> str:
        return basic(self.name, self.password1)


@dataclass
class AuthServer:
    """A running registry with auth on, and the Python API on its data directory."""

    process: RegistryProcess
    store: Store
    creds: Credentials
    tokens: dict[str, TokenCreds] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def host(self) -> str:
        return self.process.host

    @property
    def data_dir(self) -> Path:
        return self.process.data_dir

    def make_token(
        self,
        name: str,
        permissions: list[tuple[str, tuple[str, ...] | list[str]]],
        expiry: str | None = None,
    ) -> TokenCreds:
        """A scope map `<name>-map` with these permissions and a token `name` using it."""
        map_name = f"{name}-map"
        self.creds.create_scope_map(
            map_name, parse_permissions([(r, list(a)) for r, a in permissions])
        )
        _, passwords = self.creds.create_token(name, map_name, expiry=expiry)
        made = TokenCreds(
            name,
            passwords["password1"],
            passwords["password2"],
            tuple((r, tuple(a)) for r, a in permissions),
        )
        self.tokens[name] = made
        return made


@contextmanager
def auth_server(data_dir: Path, args: list[str] | None = None) -> Iterator[AuthServer]:
    """Start `serve --auth --insecure-http` (plus `args`) on `data_dir`; stop it afterwards."""
    process = RegistryProcess(data_dir, [*AUTH_ARGS, *(args or [])]).start()
    store = Store(process.data_dir)
    try:
        yield AuthServer(process, store, Credentials(store.db))
    finally:
        process.stop()
        store.close()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def unique(prefix: str = "x") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- content --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """What a repository holds before the tests run: `v1` and a referrer of it."""

    image: Image
    referrer: Image


async def seed_repository(http: aiohttp.ClientSession, base: str, repo: str) -> Seeded:
    image = make_image(seed=f"seed-{repo}", layers=1)
    await push_image(http, base, repo, image, "v1")
    referrer = make_image(
        seed=f"sig-{repo}",
        layers=1,
        subject=descriptor(OCI_MANIFEST, image.manifest),
        artifact_type=SIGNATURE_TYPE,
    )
    await push_image(http, base, repo, referrer)
    return Seeded(image, referrer)


# -- the token endpoint ---------------------------------------------------------------------------


async def fetch_token(
    http: aiohttp.ClientSession,
    base: str,
    authorization: str | None,
    scopes: list[str],
    service: str | None = None,
) -> dict[str, Any]:
    """GET /oauth2/token with these scopes (Basic credentials or none); the JSON answer."""
    params: list[tuple[str, str]] = [("scope", s) for s in scopes]
    if service is not None:
        params.append(("service", service))
    headers = {"Authorization": authorization} if authorization else {}
    async with http.get(f"{base}/oauth2/token", params=params, headers=headers) as resp:
        body = await resp.read()
        assert resp.status == 200, f"token endpoint: {resp.status} {body[:300]!r}"
        assert resp.content_type == "application/json"
        return json.loads(body)


async def bearer_for(
    http: aiohttp.ClientSession, base: str, authorization: str | None, scopes: list[str]
) -> str:
    return "Bearer " + (await fetch_token(http, base, authorization, scopes))["access_token"]


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def jwt_header(token: str) -> dict[str, Any]:
    return json.loads(_b64decode(token.split(".")[0]))


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, read without checking anything."""
    return json.loads(_b64decode(token.split(".")[1]))


def access_of(token: str) -> dict[tuple[str, str], set[str]]:
    """The JWT's `access` claim as {(type, name): actions}."""
    return {
        (entry["type"], entry["name"]): set(entry["actions"])
        for entry in jwt_claims(token)["access"]
    }


# -- refusals -------------------------------------------------------------------------------------

_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme, dict(_PARAM.findall(rest))


def expected_challenge(host: str, scope: str | None, error: str | None = None) -> str:
    parts = [f'realm="http://{host}/oauth2/token"', f'service="{host}"']
    if scope:
        parts.append(f'scope="{scope}"')
    if error:
        parts.append(f'error="{error}"')
    return "Bearer " + ",".join(parts)


async def assert_refused(
    resp: aiohttp.ClientResponse, status: int, code: str, what: str = ""
) -> dict[str, Any]:
    """The status, and (except for HEAD) an OCI error body whose first code is `code`."""
    body = await resp.read()
    label = f"{what} {resp.method} {resp.url.path}".strip()
    assert resp.status == status, f"{label}: expected {status}, got {resp.status}: {body[:300]!r}"
    if resp.method == "HEAD":
        return {}
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise AssertionError(f"{label}: body is not JSON: {body[:300]!r}") from exc
    errors = doc.get("errors") if isinstance(doc, dict) else None
    assert isinstance(errors, list) and errors, f"{label}: not an OCI error body: {doc!r}"
    for error in errors:
        assert error.get("code") in SPEC_ERROR_CODES, f"{label}: not a spec code: {error!r}"
        assert isinstance(error.get("message"), str), f"{label}: no message: {error!r}"
    assert errors[0]["code"] == code, f"{label}: expected {code}, got {errors[0]!r}"
    return errors[0]


async def assert_unauthorized(
    resp: aiohttp.ClientResponse,
    host: str,
    scope: str | None,
    error: str | None = None,
    what: str = "",
) -> None:
    """401 UNAUTHORIZED with exactly the Bearer challenge a client follows."""
    await assert_refused(resp, 401, "UNAUTHORIZED", what)
    challenge = resp.headers.get("WWW-Authenticate")
    assert challenge == expected_challenge(host, scope, error), (
        f"{what} {resp.method} {resp.url.path}: challenge {challenge!r}"
    )
