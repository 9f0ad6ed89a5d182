"""Changes to a token take effect at once, credential cache or not (DESIGN.md §7 "Credentials on
the hot path"): disabling it, an expired password, rotating or deleting a password, deleting the
token, changing its scope map. Each test first uses the credentials successfully, so the
server's cache holds them, then changes the token through the Python API and expects the very
next request to see the change. Expiry is the one change made by time passing: that test serves
the app in-process on loopback with a clock it moves, rather than wait for a real expiry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from support.auth import (
    ALL_ACTIONS,
    READER,
    AuthServer,
    assert_refused,
    auth_server,
    basic,
    bearer_for,
    fetch_token,
    jwt_claims,
    seed_repository,
    unique,
)

from appliance.auth.tokens import Credentials, parse_permissions
from appliance.config import Config
from appliance.registry.access import CREDENTIALS
from appliance.registry.app import make_app

REPO = "team/app"


class Served(Protocol):
    @property
    def url(self) -> str: ...


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    with auth_server(tmp_path_factory.mktemp("lifecycle") / "data") as srv:
        admin = srv.make_token("admin", [("**", ALL_ACTIONS)])

        async def seed() -> None:
            async with aiohttp.ClientSession(headers={"Authorization": admin.header}) as http:
                await seed_repository(http, srv.url, REPO)

        asyncio.run(seed())
        yield srv


async def _tags(http: aiohttp.ClientSession, server: Served, authorization: str) -> int:
    async with http.get(
        f"{server.url}/v2/{REPO}/tags/list", headers={"Authorization": authorization}
    ) as resp:
        await resp.read()
        return resp.status


async def _token_get(http: aiohttp.ClientSession, server: Served, authorization: str) -> int:
    async with http.get(
        f"{server.url}/oauth2/token",
        params={"scope": f"repository:{REPO}:pull"},
        headers={"Authorization": authorization},
    ) as resp:
        await resp.read()
        return resp.status


async def _token_post(
    http: aiohttp.ClientSession, server: Served, form: dict[str, str]
) -> tuple[int, dict]:
    async with http.post(f"{server.url}/oauth2/token", data=form) as resp:
        return resp.status, await resp.json(content_type=None)


def _password_form(name: str, password: str) -> dict[str, str]:
    return {"grant_type": "password", "username": name, "password": password,
            "scope": f"repository:{REPO}:pull"}


async def assert_basic_refused(
    http: aiohttp.ClientSession, server: Served, authorization: str
) -> None:
    async with http.get(
        f"{server.url}/v2/{REPO}/tags/list", headers={"Authorization": authorization}
    ) as resp:
        await assert_refused(resp, 401, "UNAUTHORIZED")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
    async with http.get(f"{server.url}/v2/", headers={"Authorization": authorization}) as resp:
        await assert_refused(resp, 401, "UNAUTHORIZED")


async def test_disabled_token_is_refused_at_once(server: AuthServer) -> None:
    token = server.make_token(unique("disabled"), [("team/*", READER)])
    async with aiohttp.ClientSession() as http:
        assert await _tags(http, server, token.header) == 200
        assert await _token_get(http, server, token.header) == 200
        status, body = await _token_post(http, server, _password_form(token.name, token.password2))
        assert status == 200
        refresh = body["refresh_token"]

        server.creds.update_token(token.name, status="disabled")
        await assert_basic_refused(http, server, token.header)
        await assert_basic_refused(http, server, basic(token.name, token.password2))
        assert await _token_get(http, server, token.header) == 401
        status, _ = await _token_post(http, server, _password_form(token.name, token.password1))
        assert status == 401
        status, _ = await _token_post(
            http, server, {"grant_type": "refresh_token", "refresh_token": refresh}
        )
        assert status == 401

        server.creds.update_token(token.name, status="enabled")
        assert await _tags(http, server, token.header) == 200
        assert await _token_get(http, server, token.header) == 200


async def test_expired_passwords_are_refused(server: AuthServer) -> None:
    token = server.make_token(unique("expired"), [("team/*", READER)],
                              expiry="2000-01-01T00:00:00Z")
    async with aiohttp.ClientSession() as http:
        for password in (token.password1, token.password2):
            await assert_basic_refused(http, server, basic(token.name, password))
            assert await _token_get(http, server, basic(token.name, password)) == 401
            status, _ = await _token_post(http, server, _password_form(token.name, password))
            assert status == 401


class Clock:
    """The in-process server's clock: real time until the test moves it."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class InProcess:
    """The registry app served in this process on loopback, auth on, with the test's clock."""

    url: str
    creds: Credentials


@asynccontextmanager
async def in_process(data_dir: Path, clock: Clock) -> AsyncIterator[InProcess]:
    app = make_app(Config(data_dir=data_dir, auth_enabled=True), clock=clock)
    async with TestServer(app, host="127.0.0.1") as served:
        server = InProcess(str(served.make_url("")).rstrip("/"), app[CREDENTIALS])
        server.creds.create_scope_map("admin-map", parse_permissions([("**", list(ALL_ACTIONS))]))
        _, passwords = server.creds.create_token("admin", "admin-map")
        async with aiohttp.ClientSession(
            headers={"Authorization": basic("admin", passwords["password1"])}
        ) as http:
            await seed_repository(http, server.url, REPO)
        yield server


async def test_a_password_stops_working_when_it_expires_even_if_cached(tmp_path: Path) -> None:
    clock = Clock()
    async with in_process(tmp_path / "data", clock) as server:
        server.creds.create_scope_map("expiring-map", parse_permissions([("team/*", READER)]))
        _, passwords = server.creds.create_token("expiring", "expiring-map")
        expiry = clock.now.replace(microsecond=0) + timedelta(hours=1)
        password = server.creds.generate_password("expiring", "password1", expiry.isoformat())
        async with aiohttp.ClientSession() as http:
            assert await _tags(http, server, basic("expiring", password)) == 200
            clock.now = expiry + timedelta(seconds=1)
            await assert_basic_refused(http, server, basic("expiring", password))
            assert await _token_get(http, server, basic("expiring", password)) == 401
            assert await _tags(http, server, basic("expiring", passwords["password2"])) == 200


async def test_rotating_a_password_revokes_the_old_one_at_once(server: AuthServer) -> None:
    token = server.make_token(unique("rotated"), [("team/*", READER)])
    old = basic(token.name, token.password1)
    async with aiohttp.ClientSession() as http:
        assert await _tags(http, server, old) == 200
        assert await _token_get(http, server, old) == 200
        assert await _tags(http, server, basic(token.name, token.password2)) == 200

        new_password = server.creds.generate_password(token.name, "password1")
        await assert_basic_refused(http, server, old)
        assert await _token_get(http, server, old) == 401
        status, _ = await _token_post(http, server, _password_form(token.name, token.password1))
        assert status == 401
        assert await _tags(http, server, basic(token.name, new_password)) == 200
        assert await _tags(http, server, basic(token.name, token.password2)) == 200
        assert await _token_get(http, server, basic(token.name, new_password)) == 200


async def test_a_failed_password_is_not_remembered_past_a_rotation(server: AuthServer) -> None:
    """The cache also remembers failures; a rotation must not let a remembered failure hide
    that the passwords changed (here: the *other* password keeps working throughout)."""
    token = server.make_token(unique("failing"), [("team/*", READER)])
    async with aiohttp.ClientSession() as http:
        await assert_basic_refused(http, server, basic(token.name, "a-wrong-guess"))
        server.creds.generate_password(token.name, "password1")
        await assert_basic_refused(http, server, basic(token.name, "a-wrong-guess"))
        assert await _tags(http, server, basic(token.name, token.password2)) == 200


async def test_deleting_a_password_or_the_token(server: AuthServer) -> None:
    token = server.make_token(unique("deleted"), [("team/*", READER)])
    second = basic(token.name, token.password2)
    async with aiohttp.ClientSession() as http:
        assert await _tags(http, server, second) == 200
        server.creds.delete_password(token.name, "password2")
        await assert_basic_refused(http, server, second)
        assert await _tags(http, server, token.header) == 200

        server.creds.delete_token(token.name)
        await assert_basic_refused(http, server, token.header)
        assert await _token_get(http, server, token.header) == 401


async def test_scope_map_changes_apply_at_once(server: AuthServer) -> None:
    token = server.make_token(unique("changing"), [("team/*", READER)])
    async with aiohttp.ClientSession() as http:
        assert await _tags(http, server, token.header) == 200
        server.creds.update_scope_map(
            f"{token.name}-map",
            add=parse_permissions([("other/*", ["content/read"])]),
            remove=parse_permissions([("team/*", list(READER))]),
        )
        async with http.get(f"{server.url}/v2/{REPO}/tags/list",
                            headers={"Authorization": token.header}) as resp:
            await assert_refused(resp, 403, "DENIED")
        body = await fetch_token(http, server.url, token.header, [f"repository:{REPO}:pull"])
        assert body["access_token"]
        assert jwt_claims(body["access_token"])["access"] == []


async def test_an_issued_bearer_token_stops_working_when_its_token_is_disabled_or_narrowed(
    server: AuthServer,
) -> None:
    token = server.make_token(unique("bearing"), [("team/*", READER)])
    async with aiohttp.ClientSession() as http:
        authorization = await bearer_for(
            http, server.url, token.header, [f"repository:{REPO}:pull"]
        )
        assert await _tags(http, server, authorization) == 200

        server.creds.update_token(token.name, status="disabled")
        assert await _tags(http, server, authorization) == 401
        server.creds.update_token(token.name, status="enabled")
        assert await _tags(http, server, authorization) == 200

        server.creds.update_scope_map(
            f"{token.name}-map",
            add=parse_permissions([("other/*", ["content/read"])]),
            remove=parse_permissions([("team/*", list(READER))]),
        )
        async with http.get(
            f"{server.url}/v2/{REPO}/tags/list", headers={"Authorization": authorization}
        ) as resp:
            await assert_refused(resp, 403, "DENIED")

        server.creds.delete_token(token.name)
        assert await _tags(http, server, authorization) == 401
