"""Turns every refusal into the spec's error body, and stamps the API version header.

The one error body of every API on the listener (`/v2`, `/oauth2`, `/gateway`, `/manage`) and
on the control socket: handlers raise `OCIError`, the `oci_errors` middleware answers it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web

from appliance.control.hierarchy import HierarchyError
from appliance.oci.errors import ErrorCode, OCIError
from appliance.registry.context import API_VERSION_HEADER, store_of

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: OCIError) -> web.Response:
    response = web.Response(
        status=error.status,
        body=json.dumps(error.body()).encode(),
        content_type="application/json",
        headers=error.headers,
    )
    response.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
    return response


def refusal_of(err: HierarchyError) -> OCIError:
    """The OCI error a refusal of the hierarchy's rules is answered with, code and status kept."""
    code = ErrorCode.__members__.get(err.code)
    if code is None:
        log.warning("refusal code %s is not in the error-code table; answered UNKNOWN", err.code)
        code = ErrorCode.UNKNOWN
    detail = None
    if code is ErrorCode.ALREADY_ACTIVATED:
        detail = "Deactivate it first: connected-registry cloud deactivate NAME (on the root)."
    return OCIError(code, err.message, detail=detail, status=err.status)


@contextlib.contextmanager
def hierarchy_refusals() -> Iterator[None]:
    """Inside, a HierarchyError is raised again as the OCIError it stands for."""
    try:
        yield
    except HierarchyError as err:
        raise refusal_of(err) from None


@web.middleware
async def oci_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except OCIError as error:
        return error_response(error)
    except web.HTTPMethodNotAllowed as exc:
        error = OCIError(
            ErrorCode.UNSUPPORTED,
            f"{request.method} is not supported here",
            detail={"allowed": sorted(exc.allowed_methods)},
            headers={"Allow": ",".join(sorted(exc.allowed_methods))},
        )
        return error_response(error)
    except web.HTTPRequestEntityTooLarge as exc:
        # A form or JSON body past client_max_size (the token, gateway and management APIs).
        return error_response(
            OCIError(ErrorCode.SIZE_INVALID, exc.text or "request body too large", status=413)
        )
    except web.HTTPNotFound:
        return error_response(
            OCIError(ErrorCode.NAME_UNKNOWN, "no such endpoint", detail={"path": request.path})
        )
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(OCIError(ErrorCode.UNKNOWN))
    response.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
    return response


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The route of an upload's PATCH, the one write that does not wait: a chunk's bytes are not
# fsynced (the upload file's length is its progress, and a client asks for it after a crash), so
# an fsync of the session's row would promise nothing. Every other PATCH (the management API's
# updates) waits as any write does.
UPLOAD_CHUNK_ROUTE = "upload-chunk"


@web.middleware
async def durable_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No write is acknowledged before it is on disk: after any handler that may have written
    (registry, token, gateway, management), wait for the store's group commit (at once when
    nothing was committed since the last fsync)."""
    response = await handler(request)
    if request.method in WRITE_METHODS and request.match_info.route.name != UPLOAD_CHUNK_ROUTE:
        await store_of(request).flush()
    return response
