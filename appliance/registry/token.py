"""The token endpoint, `/oauth2/token`: Docker's GET flow and the OAuth2 POST flow.

GET (docker, skopeo, podman): Basic credentials optional (anonymous gets anonymous pull only),
`scope=` repeated, each possibly several space-separated. POST (containerd, buildkit try it
first): a form with `grant_type=password` (`username`, `password`) or
`grant_type=refresh_token`, `scope` space separated. Either way the grant is the intersection
of what was asked and what is allowed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from aiohttp import web

from appliance.auth.access import Identity, grant, token_permissions
from appliance.auth.basic import basic_credentials
from appliance.auth.bearer import (
    ACCESS_TOKEN_SECONDS,
    REFRESH_TOKEN_SECONDS,
    InvalidToken,
)
from appliance.auth.scopes import parse_scope
from appliance.auth.tokens import NotFound
from appliance.oci.errors import ErrorCode, OCIError
from appliance.registry.access import (
    AUTH,
    AUTHORITY,
    CREDENTIALS,
    service_name,
)


def _refused(message: str) -> OCIError:
    return OCIError(
        ErrorCode.UNAUTHORIZED,
        message,
        headers={"WWW-Authenticate": 'Basic realm="connected-registry"'},
    )


async def _identity_from_password(request: web.Request, name: str, password: str) -> Identity:
    credentials = request.app[CREDENTIALS]
    token = await credentials.authenticate(name, password)
    if token is None:
        raise _refused("invalid username or password")
    actions = token_permissions(credentials.permissions_of(token.name), request.app[AUTH].anonymous)
    return Identity(token.name, "basic", actions, True)


def _anonymous(request: web.Request) -> Identity:
    return Identity(None, "anonymous", request.app[AUTH].anonymous.actions)


def _token_response(
    request: web.Request, identity: Identity, scopes: list[str], refresh: bool
) -> web.Response:
    authority = request.app[AUTHORITY]
    service = service_name(request)
    parsed = [s for s in (parse_scope(text) for text in scopes) if s is not None]
    access = grant(parsed, identity.repository_actions, not identity.anonymous)
    token, issued = authority.issue(identity.subject or "", service, access)
    body: dict = {
        "token": token,
        "access_token": token,
        "expires_in": ACCESS_TOKEN_SECONDS,
        "issued_at": datetime.fromtimestamp(issued, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if scopes:
        body["scope"] = " ".join(scopes)
    if refresh and identity.subject:
        body["refresh_token"], _ = authority.issue(
            identity.subject, service, [], REFRESH_TOKEN_SECONDS, refresh=True
        )
    return web.Response(
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def get_token(request: web.Request) -> web.StreamResponse:
    header = request.headers.get("Authorization", "")
    basic = basic_credentials(header)
    if basic is not None:
        name, password = basic
        identity = await _identity_from_password(request, name, password)
    elif header:
        raise _refused("the token endpoint takes Basic credentials or none")
    else:
        identity = _anonymous(request)
    # One `scope=` may hold several, space-separated: a client may pass a challenge's on as is.
    scopes = [s for value in request.query.getall("scope", []) for s in value.split(" ") if s]
    return _token_response(request, identity, scopes, refresh=False)


def _bad_form(error: str, description: str) -> web.Response:
    """400 as an OAuth2 error (RFC 6749 §5.2, what containerd reads) that is also an OCI error
    body, like every other refusal of this server."""
    body = {
        "error": error,
        "error_description": description,
        "errors": [{"code": ErrorCode.UNSUPPORTED.name, "message": description}],
    }
    return web.json_response(body, status=400)


async def post_token(request: web.Request) -> web.StreamResponse:
    try:
        form = await request.post()
    except ValueError as err:
        # A multipart Content-Type over a body that is not multipart, or a form not in UTF-8.
        return _bad_form("invalid_request", f"the body is not a form: {err}")
    grant_type = form.get("grant_type")
    scopes = [s for s in str(form.get("scope", "")).split(" ") if s]
    if grant_type == "password":
        identity = await _identity_from_password(
            request, str(form.get("username", "")), str(form.get("password", ""))
        )
    elif grant_type == "refresh_token":
        identity = _from_refresh_token(request, str(form.get("refresh_token", "")))
    else:
        return _bad_form("unsupported_grant_type", "grant_type must be password or refresh_token")
    return _token_response(request, identity, scopes, refresh=True)


def _from_refresh_token(request: web.Request, refresh_token: str) -> Identity:
    try:
        claims = request.app[AUTHORITY].verify(refresh_token, service_name(request), refresh=True)
    except InvalidToken as err:
        raise _refused(f"refresh token refused: {err}") from None
    credentials = request.app[CREDENTIALS]
    try:
        token = credentials.token(claims["sub"])
    except NotFound:
        token = None
    if token is None or not token.enabled:
        raise _refused("the token of this refresh token is disabled or gone")
    actions = token_permissions(credentials.permissions_of(token.name), request.app[AUTH].anonymous)
    return Identity(token.name, "basic", actions, True)
