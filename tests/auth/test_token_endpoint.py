"""The token endpoint, `/oauth2/token` (peers.md §9): Docker's GET flow and the OAuth2 POST
flow, the grant as the intersection of asked and allowed, and the JWT's claims."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from auth_helpers import (
    ALL_ACTIONS,
    READER,
    AuthServer,
    access_of,
    assert_refused,
    auth_server,
    basic,
    fetch_token,
    jwt_claims,
    jwt_header,
)

PUSH = {"content/read", "content/write", "metadata/read"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    with auth_server(tmp_path_factory.mktemp("token-endpoint") / "data") as srv:
        srv.make_token("reader", [("team/*", READER)])
        srv.make_token("writer", [("team/**", ALL_ACTIONS)])
        srv.make_token("mixed", [("team/app", ("content/read",)), ("team/*", ("metadata/read",))])
        yield srv


async def _post(
    http: aiohttp.ClientSession, base: str, form: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base}/oauth2/token", data=form) as resp:
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = {}
        return resp.status, body


async def test_get_answers_the_docker_token_response(server: AuthServer) -> None:
    before = int(time.time())
    async with aiohttp.ClientSession() as http:
        body = await fetch_token(
            http, server.url, server.tokens["reader"].header, ["repository:team/app:pull"]
        )
    after = int(time.time())
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    issued = datetime.strptime(body["issued_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before - 1 <= issued.timestamp() <= after + 1
    assert "refresh_token" not in body


async def test_jwt_claims(server: AuthServer) -> None:
    async with aiohttp.ClientSession() as http:
        before = int(time.time())
        first = await fetch_token(http, server.url, server.tokens["reader"].header,
                                  ["repository:team/app:pull"])
        second = await fetch_token(http, server.url, server.tokens["reader"].header,
                                   ["repository:team/app:pull"])
    token = first["access_token"]
    header, claims = jwt_header(token), jwt_claims(token)
    assert header["alg"] == "ES256" and header["typ"] == "JWT" and header.get("kid")
    assert claims["iss"] == "connected-registry"
    assert claims["sub"] == "reader"
    assert claims["aud"] == server.host
    assert claims["exp"] - claims["iat"] == 300
    assert before - 1 <= claims["iat"] <= before + 5
    assert claims["nbf"] <= claims["iat"]
    assert isinstance(claims["jti"], str) and claims["jti"]
    assert claims["jti"] != jwt_claims(second["access_token"])["jti"]
    assert claims["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["content/read", "metadata/read"]}
    ]


@pytest.mark.parametrize(
    ("token", "scopes", "expected"),
    [
        # Asking for push on a read-only map: only the read actions, never an error.
        ("reader", ["repository:team/app:pull,push"], {("repository", "team/app"): set(READER)}),
        ("reader", ["repository:team/app:push,delete"], {("repository", "team/app"): set(READER)}),
        ("reader", ["repository:team/app:delete"], {}),
        ("reader", ["repository:team/app:*"], {("repository", "team/app"): set(READER)}),
        # team/* does not reach two segments down, nor other repositories.
        ("reader", ["repository:team/sub/app:pull"], {}),
        ("reader", ["repository:other/app:pull"], {}),
        ("writer", ["repository:team/sub/app:pull,push"], {("repository", "team/sub/app"): PUSH}),
        ("writer", ["repository:team/app:delete"],
         {("repository", "team/app"): {"content/delete"}}),
        ("writer", ["repository:team/app:*"], {("repository", "team/app"): set(ALL_ACTIONS)}),
        ("writer", ["repository:team/app:pull", "repository:team/app:delete"],
         {("repository", "team/app"): {"content/read", "metadata/read", "content/delete"}}),
        ("writer", ["repository:team/a:pull", "repository:other/b:pull"],
         {("repository", "team/a"): set(READER)}),
        ("mixed", ["repository:team/app:pull"], {("repository", "team/app"): set(READER)}),
        ("mixed", ["repository:team/web:pull"], {("repository", "team/web"): {"metadata/read"}}),
        ("reader", ["registry:catalog:*"], {("registry", "catalog"): {"*"}}),
        ("reader", [], {}),
    ],
)
async def test_grant_is_the_intersection(
    server: AuthServer, token: str, scopes: list[str], expected: dict
) -> None:
    async with aiohttp.ClientSession() as http:
        body = await fetch_token(http, server.url, server.tokens[token].header, scopes)
    assert access_of(body["access_token"]) == expected


@pytest.mark.parametrize(
    "scope",
    [
        "garbage",
        "repository",
        "repository:team/app",
        "repository::pull",
        "repository:team/app:",
        "repository:Team/App:pull",
        "repository:team//app:pull",
        "repository:team/app:frobnicate",
        "registry:catalog",
        "registry:other:*",
        "bucket:team/app:pull",
        "repository:127.0.0.1:5000/team/app:pull",
        ":::",
        "repository:" + "a/" * 200 + "b:pull",
    ],
)
async def test_malformed_scopes_are_ignored(server: AuthServer, scope: str) -> None:
    async with aiohttp.ClientSession() as http:
        body = await fetch_token(
            http, server.url, server.tokens["writer"].header,
            [scope, "repository:team/app:pull"],
        )
    assert access_of(body["access_token"]) == {("repository", "team/app"): set(READER)}


async def test_legacy_resource_class_is_accepted(server: AuthServer) -> None:
    async with aiohttp.ClientSession() as http:
        body = await fetch_token(
            http, server.url, server.tokens["reader"].header, ["repository(plugin):team/app:pull"]
        )
    assert access_of(body["access_token"]) == {("repository", "team/app"): set(READER)}


async def test_anonymous_get_gets_an_empty_grant(server: AuthServer) -> None:
    async with aiohttp.ClientSession() as http:
        body = await fetch_token(
            http, server.url, None,
            ["repository:team/app:pull,push", "registry:catalog:*"], service=server.host,
        )
    claims = jwt_claims(body["access_token"])
    assert claims["sub"] == ""
    assert claims["access"] == []


@pytest.mark.parametrize(
    "authorization",
    [
        basic("reader", "wrong"),
        basic("nobody-at-all", "wrong"),
        basic("reader", ""),
        "Basic %%%",
        "Basic \u00e9t\u00e9",
        "Basic " + base64.b64encode(b"\xff\xfe:\x80").decode(),
        "Bearer whatever",
    ],
    ids=["wrong-password", "unknown-token", "empty-password", "not-base64", "non-ascii",
         "not-utf8", "bearer"],
)
async def test_get_with_bad_credentials_is_401(server: AuthServer, authorization: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(
        f"{server.url}/oauth2/token",
        params={"scope": "repository:team/app:pull"},
        headers={"Authorization": authorization},
    ) as resp:
        await assert_refused(resp, 401, "UNAUTHORIZED")
        assert "WWW-Authenticate" in resp.headers


async def _use(http: aiohttp.ClientSession, base: str, token: str, repo: str) -> int:
    async with http.get(
        f"{base}/v2/{repo}/tags/list", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        await resp.read()
        return resp.status


async def test_post_password_grant_and_refresh(server: AuthServer) -> None:
    creds = server.tokens["writer"]
    async with aiohttp.ClientSession() as http:
        status, body = await _post(http, server.url, {
            "grant_type": "password",
            "username": creds.name,
            "password": creds.password1,
            "scope": "repository:team/app:pull repository:team/web:pull,push",
            "service": server.host,
            "client_id": "containerd-client",
            "access_type": "offline",
        })
        assert status == 200, body
        assert body["expires_in"] == 300 and body["issued_at"]
        assert access_of(body["access_token"]) == {
            ("repository", "team/app"): set(READER),
            ("repository", "team/web"): PUSH,
        }
        refresh = body["refresh_token"]
        assert refresh and refresh != body["access_token"]
        # The tags list answers 404 (no such repository) once access is granted.
        assert await _use(http, server.url, body["access_token"], "team/app") == 404

        status, fresh = await _post(http, server.url, {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "scope": "repository:team/sub/app:delete",
            "service": server.host,
            "client_id": "containerd-client",
        })
        assert status == 200, fresh
        assert fresh["access_token"] != body["access_token"]
        claims = jwt_claims(fresh["access_token"])
        assert claims["sub"] == creds.name and claims["aud"] == server.host
        assert claims["jti"] != jwt_claims(body["access_token"])["jti"]
        assert access_of(fresh["access_token"]) == {
            ("repository", "team/sub/app"): {"content/delete"}
        }
        assert await _use(http, server.url, fresh["access_token"], "team/sub/app") == 401


async def test_post_password_grant_intersects_too(server: AuthServer) -> None:
    creds = server.tokens["reader"]
    async with aiohttp.ClientSession() as http:
        status, body = await _post(http, server.url, {
            "grant_type": "password", "username": creds.name, "password": creds.password2,
            "scope": "repository:team/app:pull,push,delete", "service": server.host,
        })
    assert status == 200, body
    assert access_of(body["access_token"]) == {("repository", "team/app"): set(READER)}


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "client_credentials", "client_id": "x"},
        {"grant_type": "authorization_code", "code": "x"},
        {"grant_type": ""},
        {"username": "reader", "password": "x"},
    ],
)
async def test_post_unknown_grant_type_is_400(server: AuthServer, form: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as http:
        status, body = await _post(http, server.url, form)
    assert status == 400, body
    assert body.get("error") == "unsupported_grant_type"
    assert body["errors"][0]["code"] == "UNSUPPORTED"


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data; boundary=x", "multipart/form-data"],
)
async def test_post_a_multipart_type_over_a_body_that_is_not_multipart_is_400(
    server: AuthServer, content_type: str
) -> None:
    async with aiohttp.ClientSession() as http, http.post(
        f"{server.url}/oauth2/token",
        data=b"grant_type=password&username=reader&password=x",
        headers={"Content-Type": content_type},
    ) as resp:
        await assert_refused(resp, 400, "UNSUPPORTED")
        body = await resp.json()
    assert body["error"] == "invalid_request"
    assert "Traceback" not in server.process.log()


async def test_post_bad_password_is_401(server: AuthServer) -> None:
    async with aiohttp.ClientSession() as http:
        for form in (
            {"grant_type": "password", "username": "reader", "password": "wrong"},
            {"grant_type": "password", "username": "nobody-at-all", "password": "wrong"},
            {"grant_type": "password"},
        ):
            async with http.post(f"{server.url}/oauth2/token", data=form) as resp:
                await assert_refused(resp, 401, "UNAUTHORIZED", str(form))


async def test_post_refresh_with_a_bad_refresh_token_is_401(server: AuthServer) -> None:
    creds = server.tokens["writer"]
    async with aiohttp.ClientSession() as http:
        access = (await fetch_token(http, server.url, creds.header, []))["access_token"]
        for refresh in ("", "not-a-jwt", access):
            status, _ = await _post(
                http, server.url, {"grant_type": "refresh_token", "refresh_token": refresh}
            )
            assert status == 401, refresh


async def test_post_a_form_over_a_mebibyte_is_413_size_invalid(server: AuthServer) -> None:
    form = b"grant_type=password&username=reader&password=" + b"x" * 1024**2
    async with aiohttp.ClientSession() as http, http.post(
        f"{server.url}/oauth2/token",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        await assert_refused(resp, 413, "SIZE_INVALID")
