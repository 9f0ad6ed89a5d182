"""How the sync client authenticates to a registry: anonymous first, then whatever its
`WWW-Authenticate` asks for — Basic with the configured credentials, or Docker's Bearer flow
(a token from the realm, with Basic credentials when there are some, cached per scope). Once a
Bearer realm is known, tokens for new scopes are fetched before the request, so each
repository costs no extra 401 round trip."""

from __future__ import annotations

import re
from dataclasses import replace

import aiohttp

from appliance.transport import PeerError, Transport, json_answer

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` → ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


class RegistryAuth:
    """The credentials of one client for one registry, learnt from its challenges."""

    def __init__(self, transport: Transport, username: str | None, password: str | None) -> None:
        self._transport = transport
        self._basic = (
            aiohttp.encode_basic_auth(username, password or "") if username is not None else None
        )
        self._tokens: dict[str, str] = {}
        self._realm: dict[str, str] | None = None
        self._use_basic = False

    async def authorization(self, scope: str) -> str | None:
        """The `Authorization` header for a request needing `scope`; None: anonymous."""
        if self._use_basic:
            return self._basic
        token = self._tokens.get(scope)
        if token is None and self._realm is not None:
            token = await self._fetch_token(self._realm, scope)
        return token

    async def answer(self, header: str, scope: str) -> bool:
        """Prepare credentials for a retry after a 401 with `WWW-Authenticate: header`; False
        when there is nothing to try."""
        scheme, params = parse_challenge(header)
        if scheme == "basic":
            if self._basic is None or self._use_basic:
                return False
            self._use_basic = True
            return True
        if scheme == "bearer" and params.get("realm"):
            self._realm = {"realm": params["realm"], "service": params.get("service", "")}
            self._tokens.pop(scope, None)
            await self._fetch_token(self._realm, scope, params.get("scope"))
            return True
        return False

    async def _fetch_token(
        self, realm: dict[str, str], scope: str, asked: str | None = None
    ) -> str:
        query: list[tuple[str, str]] = [("service", realm["service"])] if realm["service"] else []
        # A scope key may name several scopes (a push that may mount from other repositories):
        # the Docker token protocol repeats `scope=` for each.
        query += [("scope", one) for one in (asked or scope).split(" ") if one]
        headers = {"Authorization": self._basic} if self._basic else {}
        service = replace(self._transport.peer, name=realm["realm"])
        response = await self._transport.send(
            "GET", realm["realm"], headers, params=query, tries=1, peer=service
        )
        async with response:
            if response.status != 200:
                raise PeerError(
                    "UNAUTHORIZED",
                    f"the token service {realm['realm']} answered {response.status}",
                    response.status,
                )
            document = await json_answer(response)
        token = document.get("token") or document.get("access_token")
        if not isinstance(token, str) or not token:
            raise PeerError("UNAUTHORIZED", f"the token service {realm['realm']} sent no token")
        self._tokens[scope] = f"Bearer {token}"
        return self._tokens[scope]
