"""Hostile bearer tokens: forged, re-signed, re-targeted and mis-used JWTs are all refused.

Tokens with a valid signature but bad claims are forged with the registry's own signing key
(`<data_dir>/secrets/token-signing-key.pem`, readable by the test, which runs as the server's
user): that isolates each claim check from the signature check.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from support.auth import (
    ALL_ACTIONS,
    READER,
    AuthServer,
    assert_refused,
    assert_unauthorized,
    auth_server,
    bearer_for,
    fetch_token,
    jwt_claims,
    jwt_header,
    seed_repository,
)

REPO = "team/app"
TAGS = f"/v2/{REPO}/tags/list"
READ_ACCESS = [{"type": "repository", "name": REPO, "actions": ["content/read", "metadata/read"]}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    with auth_server(tmp_path_factory.mktemp("bearer") / "data") as srv:
        admin = srv.make_token("admin", [("**", ALL_ACTIONS)])
        srv.make_token("reader", [("team/*", READER)])
        srv.make_token("nothing", [("nothing/here", READER)])

        async def seed() -> None:
            async with aiohttp.ClientSession(headers={"Authorization": admin.header}) as http:
                for repo in (REPO, "team/web", "other/app"):
                    await seed_repository(http, srv.url, repo)

        asyncio.run(seed())
        yield srv


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(doc: dict[str, Any]) -> str:
    return _b64(json.dumps(doc, separators=(",", ":")).encode())


def signing_key(server: AuthServer) -> ec.EllipticCurvePrivateKey:
    pem = (server.data_dir / "secrets" / "token-signing-key.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def good_claims(server: AuthServer, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "connected-registry",
        "sub": "reader",
        "aud": server.host,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": f"forged-{time.monotonic_ns()}",
        "access": READ_ACCESS,
    }
    for name, value in changes.items():
        if value is _DROP:
            claims.pop(name)
        else:
            claims[name] = value
    return claims


_DROP = object()


def forge(server: AuthServer, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, signing_key(server), algorithm="ES256", headers={"typ": "JWT"})


async def _status(server: AuthServer, path: str, token: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(
        f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        await resp.read()
        return resp.status


async def assert_bearer_refused(
    server: AuthServer, token: str, path: str, scope: str | None, error: str
) -> None:
    async with aiohttp.ClientSession() as http, http.get(
        f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        await assert_unauthorized(resp, server.host, scope, error)


async def assert_invalid_token(server: AuthServer, token: str, path: str = TAGS) -> None:
    await assert_bearer_refused(server, token, path, None, "invalid_token")


async def test_a_forged_token_with_good_claims_works(server: AuthServer) -> None:
    """The control: the forging harness makes tokens the server accepts, so every refusal
    below is due to the one thing changed."""
    assert await _status(server, TAGS, forge(server, good_claims(server))) == 200
    claims = good_claims(server, aud=["elsewhere:443", server.host])
    assert await _status(server, TAGS, forge(server, claims)) == 200


# -- bad signatures -------------------------------------------------------------------------------


async def _real_token(server: AuthServer) -> str:
    async with aiohttp.ClientSession() as http:
        body = await fetch_token(http, server.url, server.tokens["reader"].header,
                                 [f"repository:{REPO}:pull"])
    return body["access_token"]


async def test_tampered_payload_is_refused(server: AuthServer) -> None:
    token = await _real_token(server)
    header, _, signature = token.split(".")
    claims = jwt_claims(token)
    claims["access"] = [{"type": "repository", "name": "other/app", "actions": list(ALL_ACTIONS)}]
    tampered = f"{header}.{_segment(claims)}.{signature}"
    await assert_invalid_token(server, tampered, "/v2/other/app/tags/list")
    # Same claims, changed by one byte of the signature.
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    await assert_invalid_token(server, f"{header}.{token.split('.')[1]}.{flipped}")
    # No signature at all.
    await assert_invalid_token(server, f"{header}.{token.split('.')[1]}.")


async def test_token_signed_by_another_key_is_refused(server: AuthServer) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    kid = jwt_header(await _real_token(server))["kid"]
    token = jwt.encode(good_claims(server), other, algorithm="ES256",
                       headers={"kid": kid, "typ": "JWT"})
    await assert_invalid_token(server, token)


async def test_alg_none_is_refused(server: AuthServer) -> None:
    for alg in ("none", "None", "NONE"):
        token = f"{_segment({'alg': alg, 'typ': 'JWT'})}.{_segment(good_claims(server))}."
        await assert_invalid_token(server, token)


async def test_hs256_signed_with_the_public_key_is_refused(server: AuthServer) -> None:
    public = signing_key(server).public_key()
    for encoding, fmt in (
        (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    ):
        secret = public.public_bytes(encoding, fmt)
        header = _segment({"alg": "HS256", "typ": "JWT"})
        signing_input = f"{header}.{_segment(good_claims(server))}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        await assert_invalid_token(server, f"{signing_input}.{_b64(mac)}")


async def test_other_algorithms_with_the_right_key_are_refused(server: AuthServer) -> None:
    """ES256 only: a signature by the right key over another hash (ES384) is refused."""
    key = signing_key(server)
    header = {"alg": "ES384", "typ": "JWT"}
    signing_input = f"{_segment(header)}.{_segment(good_claims(server))}"
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    await assert_invalid_token(server, f"{signing_input}.{_b64(raw)}")


# -- a valid signature over bad claims ------------------------------------------------------------


BAD_CLAIMS: dict[str, dict[str, Any]] = {
    "expired": {"exp": -3600},
    "expired-long-ago": {"exp": -10 * 24 * 3600, "nbf": -11 * 24 * 3600, "iat": -11 * 24 * 3600},
    "not-yet-valid": {"nbf": 3600},
    "issued-in-the-future": {"iat": 3600, "nbf": 3600},
    "wrong-audience": {"aud": "registry.example.com"},
    "wrong-audience-port": {"aud": "127.0.0.1:1"},
    "wrong-audience-list": {"aud": ["registry.example.com", "other:443"]},
    "wrong-issuer": {"iss": "someone-else"},
    "no-issuer": {"iss": _DROP},
    "no-subject": {"sub": _DROP},
    "no-audience": {"aud": _DROP},
    "no-expiry": {"exp": _DROP},
    "no-not-before": {"nbf": _DROP},
    "no-issued-at": {"iat": _DROP},
    "non-numeric-expiry": {"exp": "tomorrow"},
    "refresh-token": {"use": "refresh"},
}
_RELATIVE = {"exp", "nbf", "iat"}


@pytest.mark.parametrize("case", list(BAD_CLAIMS))
async def test_valid_signature_with_bad_claims_is_refused(server: AuthServer, case: str) -> None:
    now = int(time.time())
    changes = {
        name: (now + value if name in _RELATIVE and isinstance(value, int) else value)
        for name, value in BAD_CLAIMS[case].items()
    }
    await assert_invalid_token(server, forge(server, good_claims(server, **changes)))


async def test_a_real_refresh_token_is_not_an_access_token(server: AuthServer) -> None:
    creds = server.tokens["reader"]
    async with aiohttp.ClientSession() as http, http.post(
        f"{server.url}/oauth2/token",
        data={"grant_type": "password", "username": creds.name, "password": creds.password1,
              "scope": f"repository:{REPO}:pull", "service": server.host},
    ) as resp:
        body = await resp.json()
    assert resp.status == 200
    await assert_invalid_token(server, body["refresh_token"])
    await assert_invalid_token(server, body["refresh_token"], "/v2/")
    # …and the access token is no refresh token.
    async with aiohttp.ClientSession() as http, http.post(
        f"{server.url}/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": body["access_token"]},
    ) as resp:
        await assert_refused(resp, 401, "UNAUTHORIZED")


async def test_token_issued_for_another_host_name_is_refused(server: AuthServer) -> None:
    """The audience is the host the client dialled: a token fetched as `localhost:PORT` is
    not good at `127.0.0.1:PORT`."""
    other_host = f"localhost:{server.process.port}"
    async with aiohttp.ClientSession() as http, http.get(
        f"{server.url}/oauth2/token",
        params={"scope": f"repository:{REPO}:pull"},
        headers={"Authorization": server.tokens["reader"].header, "Host": other_host},
    ) as resp:
        body = await resp.json()
    assert jwt_claims(body["access_token"])["aud"] == other_host
    await assert_invalid_token(server, body["access_token"])


async def test_garbage_claims_do_not_grant(server: AuthServer) -> None:
    """Junk in `access` grants nothing (and is no server error)."""
    for access in ("junk", [1, "x", None], [{"type": "repository", "name": REPO}],
                   [{"type": "repository", "name": REPO, "actions": "content/read"}]):
        # The reader's map allows the tags list: fetch a token with the scope.
        await assert_bearer_refused(server, forge(server, good_claims(server, access=access)),
                                    TAGS, f"repository:{REPO}:pull", "insufficient_scope")


# -- replay and empty grants ----------------------------------------------------------------------


async def test_token_for_one_repository_replayed_on_another(server: AuthServer) -> None:
    async with aiohttp.ClientSession() as http:
        auth = await bearer_for(http, server.url, server.tokens["admin"].header,
                                [f"repository:{REPO}:pull,push,delete"])
        assert access_of_names(auth) == [REPO]
        for repo in ("team/web", "other/app"):
            for method, path in (("GET", f"/v2/{repo}/manifests/v1"),
                                 ("GET", f"/v2/{repo}/tags/list"),
                                 ("DELETE", f"/v2/{repo}/manifests/v1"),
                                 ("POST", f"/v2/{repo}/blobs/uploads/")):
                async with http.request(method, f"{server.url}{path}",
                                        headers={"Authorization": auth}) as resp:
                    # The admin's map allows it: the client must fetch a token for this scope.
                    await assert_refused(resp, 401, "UNAUTHORIZED", path)
                    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
                    assert f'scope="repository:{repo}:' in resp.headers["WWW-Authenticate"]
        # A reader's token for team/app on other/app, which its map does not allow: 403.
        auth = await bearer_for(http, server.url, server.tokens["reader"].header,
                                [f"repository:{REPO}:pull"])
        async with http.get(f"{server.url}/v2/other/app/manifests/v1",
                            headers={"Authorization": auth}) as resp:
            await assert_refused(resp, 403, "DENIED")


def access_of_names(authorization: str) -> list[str]:
    token = authorization.removeprefix("Bearer ")
    return [entry["name"] for entry in jwt_claims(token)["access"]]


async def test_a_token_whose_scope_map_grants_nothing(server: AuthServer) -> None:
    creds = server.tokens["nothing"]
    async with aiohttp.ClientSession() as http:
        body = await fetch_token(http, server.url, creds.header,
                                 [f"repository:{REPO}:pull,push,delete", "registry:catalog:*"])
        auth = f"Bearer {body['access_token']}"
        assert [e for e in jwt_claims(body["access_token"])["access"]
                if e["type"] == "repository"] == []
        for header in (creds.header, auth):
            for method, path in (("GET", f"/v2/{REPO}/manifests/v1"),
                                 ("GET", f"/v2/{REPO}/tags/list"),
                                 ("DELETE", f"/v2/{REPO}/manifests/v1"),
                                 ("POST", f"/v2/{REPO}/blobs/uploads/")):
                async with http.request(method, f"{server.url}{path}",
                                        headers={"Authorization": header}) as resp:
                    await assert_refused(resp, 403, "DENIED", path)
            async with http.get(f"{server.url}/v2/_catalog",
                                headers={"Authorization": header}) as resp:
                assert resp.status == 200
                assert (await resp.json())["repositories"] == []
            async with http.get(f"{server.url}/v2/", headers={"Authorization": header}) as resp:
                assert resp.status == 200
