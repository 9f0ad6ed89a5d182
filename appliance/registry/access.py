"""Authentication and authorization of every `/v2/` request, and the node's mode.

With auth on, a caller is a bearer token (from our token endpoint), Basic credentials of a
token, or anonymous. What each handler needs is declared beside it (`@requires`). Refusals:
- no or bad credentials → 401 `UNAUTHORIZED` with the Bearer challenge clients follow;
- a bearer token without the scope, when its token's scope map would allow it → 401 with the
  challenge for that scope (the client fetches a bigger token); a cross-repository mount's
  challenge asks pull on its `from` too, as distribution's does;
- good credentials beyond their scope map → 403 `DENIED`.
Whatever the credentials, a ReadOnly node refuses pushes (403 `DENIED`) and deletes (405
`UNSUPPORTED`).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from appliance.auth.access import (
    AnonymousPull,
    Identity,
    bearer_actions,
    token_permissions,
)
from appliance.auth.basic import basic_credentials
from appliance.auth.bearer import InvalidToken, TokenAuthority
from appliance.auth.scopes import CONTENT_DELETE, CONTENT_READ, CONTENT_WRITE, METADATA_READ
from appliance.auth.tokens import Credentials
from appliance.control.roles import READ_ONLY
from appliance.oci.errors import ErrorCode, OCIError
from appliance.oci.names import NAME_RE, validate_name
from appliance.registry.context import CATALOG, LOGIN, Handler, required_access, store_of

READ_ACTIONS = frozenset({CONTENT_READ, METADATA_READ})


@dataclass(frozen=True)
class AuthSettings:
    enabled: bool
    anonymous: AnonymousPull


AUTH = web.AppKey("auth", AuthSettings)
CREDENTIALS = web.AppKey("credentials", Credentials)
AUTHORITY = web.AppKey("authority", TokenAuthority)
IDENTITY = web.RequestKey("identity", Identity)


def service_name(request: web.Request) -> str:
    """The `service` of challenges and the audience of tokens: the host the client dialled."""
    return request.host


def _challenge(request: web.Request, scope: str | None, error: str | None = None) -> str:
    parts = [
        f'realm="{request.scheme}://{request.host}/oauth2/token"',
        f'service="{service_name(request)}"',
    ]
    if scope:
        parts.append(f'scope="{scope}"')
    if error:
        parts.append(f'error="{error}"')
    return "Bearer " + ",".join(parts)


def _docker_scope(repository: str, needs: frozenset[str]) -> str:
    if CONTENT_WRITE in needs:
        actions = "pull,push"
    elif CONTENT_DELETE in needs:
        actions = "delete"
    else:
        actions = "pull"
    return f"repository:{repository}:{actions}"


def unauthorized(
    request: web.Request, scope: str | None, message: str, error: str | None = None
) -> OCIError:
    return OCIError(
        ErrorCode.UNAUTHORIZED,
        message,
        headers={"WWW-Authenticate": _challenge(request, scope, error)},
    )


def basic_unauthorized(realm: str, message: str) -> OCIError:
    """401 with the Basic challenge of `realm`: the gateway and management APIs, which take a
    token's name and password, never a bearer token."""
    return OCIError(
        ErrorCode.UNAUTHORIZED, message, headers={"WWW-Authenticate": f'Basic realm="{realm}"'}
    )


async def identify(request: web.Request) -> Identity:
    """The caller, from the Authorization header; 401 for credentials that do not check out."""
    app = request.app
    anonymous = app[AUTH].anonymous
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        try:
            claims = app[AUTHORITY].verify(value.strip(), service_name(request))
        except InvalidToken as err:
            raise unauthorized(
                request, None, f"bearer token refused: {err}", "invalid_token"
            ) from None
        granted, catalog = bearer_actions(claims.get("access", []))
        subject = claims["sub"] or None
        if subject is None:
            return Identity(None, "bearer", anonymous.actions, False, anonymous.actions)
        # The token behind a bearer token is looked up on every request, so disabling or
        # deleting it, or narrowing its scope map, takes effect at once, not in 5 minutes.
        permissions = app[CREDENTIALS].standing_permissions(subject)
        if permissions is None:
            raise unauthorized(
                request,
                None,
                "the token of this bearer token is disabled or gone",
                "invalid_token",
            )
        entitled = token_permissions(permissions, anonymous)

        def actions(repository: str) -> frozenset[str]:
            return (granted(repository) & entitled(repository)) | anonymous.actions(repository)

        return Identity(subject, "bearer", actions, catalog, entitled)
    basic = basic_credentials(header)
    if basic is not None:
        name, password = basic
        token = await app[CREDENTIALS].authenticate(name, password)
        if token is None:
            raise unauthorized(request, None, "invalid username or password")
        permissions = app[CREDENTIALS].permissions_of(token.name)
        actions = token_permissions(permissions, anonymous)
        return Identity(token.name, "basic", actions, True, actions)
    return Identity(None, "anonymous", anonymous.actions)


def authorize(request: web.Request, identity: Identity, needs: frozenset[str]) -> None:
    if LOGIN in needs:
        if identity.anonymous:
            raise unauthorized(request, None, "authentication required")
        return
    if CATALOG in needs:
        if identity.anonymous:
            raise unauthorized(request, "registry:catalog:*", "authentication required")
        if not identity.catalog:
            raise unauthorized(
                request,
                "registry:catalog:*",
                "token does not grant the catalog",
                "insufficient_scope",
            )
        return
    repository = validate_name(request.match_info["name"])
    authorize_repository(request, identity, repository, needs)


def _mount_source(request: web.Request, repository: str, needs: frozenset[str]) -> str | None:
    """The `from` of a cross-repository mount (`POST …/uploads/?mount=D&from=R`), which the
    mount reads; None for any other request, or a `from` the handler will refuse."""
    query = request.query
    if CONTENT_WRITE not in needs or "mount" not in query or "from" not in query:
        return None
    source = query["from"]
    if source == repository or not NAME_RE.fullmatch(source):
        return None
    return source


def _challenge_scope(request: web.Request, repository: str, needs: frozenset[str]) -> str:
    scope = _docker_scope(repository, needs)
    source = _mount_source(request, repository, needs)
    if source is not None:
        # As distribution does: the challenge asks pull on `from` too (one scope parameter,
        # space-separated), so a client that asks for exactly that can mount.
        scope += f" repository:{source}:pull"
    return scope


def authorize_repository(
    request: web.Request, identity: Identity, repository: str, needs: frozenset[str]
) -> None:
    if needs <= identity.repository_actions(repository):
        return
    scope = _challenge_scope(request, repository, needs)
    if identity.anonymous:
        raise unauthorized(request, scope, "authentication required")
    entitled = identity.entitled_actions
    if identity.method == "bearer" and entitled is not None and needs <= entitled(repository):
        raise unauthorized(request, scope, "token does not grant this scope", "insufficient_scope")
    raise OCIError(
        ErrorCode.DENIED,
        "insufficient scopes to perform the operation",
        detail={"repository": repository, "needs": sorted(needs)},
    )


def authorize_mount_source(request: web.Request, identity: Identity, needs: frozenset[str]) -> None:
    """A bearer token that may push but lacks pull on the mount's source, which its scope map
    would give: 401 for a token with both. Without the right, the mount becomes an upload."""
    repository = request.match_info.get("name", "")
    source = _mount_source(request, repository, needs)
    entitled = identity.entitled_actions
    if source is None or identity.method != "bearer" or entitled is None:
        return
    if CONTENT_READ in identity.repository_actions(source) or CONTENT_READ not in entitled(source):
        return
    raise unauthorized(
        request,
        _challenge_scope(request, repository, needs),
        "token does not grant pull on the mount's source",
        "insufficient_scope",
    )


def check_mode(request: web.Request, needs: frozenset[str]) -> None:
    if CONTENT_WRITE not in needs and CONTENT_DELETE not in needs:
        return
    if store_of(request).node.mode != READ_ONLY:
        return
    if CONTENT_WRITE in needs:
        raise OCIError(
            ErrorCode.DENIED,
            "this operation is not allowed on this registry: it is a ReadOnly connected "
            "registry, which only pulls",
        )
    raise OCIError(
        ErrorCode.UNSUPPORTED,
        "deletes are not supported on this registry: it is a ReadOnly connected registry",
    )


def may_read(identity: Identity | None, repository: str) -> bool:
    """For `_catalog`: may this caller see the repository at all?"""
    if identity is None:
        return True
    entitled = identity.entitled_actions or identity.repository_actions
    return bool(entitled(repository) & READ_ACTIONS)


def may_pull(identity: Identity | None, repository: str) -> bool:
    """For a cross-repository mount: may this caller read the source? (None: auth is off.)"""
    return identity is None or CONTENT_READ in identity.repository_actions(repository)


@web.middleware
async def access_control(request: web.Request, handler: Handler) -> web.StreamResponse:
    needs = required_access(request)
    if needs is None:
        return await handler(request)
    if request.app[AUTH].enabled:
        identity = await identify(request)
        request[IDENTITY] = identity
        authorize(request, identity, needs)
        check_mode(request, needs)
        authorize_mount_source(request, identity, needs)
    else:
        check_mode(request, needs)
    return await handler(request)
