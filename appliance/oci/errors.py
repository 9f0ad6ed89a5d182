"""The error codes of every HTTP API, each carrying its HTTP status.

Every refusal on HTTP is an `OCIError`; the HTTP layer turns it into the spec's body
`{"errors": [{"code", "message", "detail"}]}`, for the gateway and management APIs too.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class ErrorCode(Enum):
    """The 14 codes of the distribution spec, then the appliance's own (the gateway and
    management APIs), with their default status and message."""

    BLOB_UNKNOWN = (404, "blob unknown to registry")
    BLOB_UPLOAD_INVALID = (400, "blob upload invalid")
    BLOB_UPLOAD_UNKNOWN = (404, "blob upload unknown to registry")
    DIGEST_INVALID = (400, "provided digest did not match uploaded content")
    MANIFEST_BLOB_UNKNOWN = (400, "manifest references a manifest or blob unknown to registry")
    MANIFEST_INVALID = (400, "manifest invalid")
    MANIFEST_UNKNOWN = (404, "manifest unknown to registry")
    NAME_INVALID = (400, "invalid repository name")
    NAME_UNKNOWN = (404, "repository name not known to registry")
    SIZE_INVALID = (400, "provided length did not match content length")
    UNAUTHORIZED = (401, "authentication required")
    DENIED = (403, "requested access to the resource is denied")
    UNSUPPORTED = (405, "the operation is unsupported")
    TOOMANYREQUESTS = (429, "too many requests")
    # Beyond the spec. A value the hierarchy refuses, and a body that is not a JSON object:
    INVALID = (400, "invalid request")
    BODY_INVALID = (400, "the body must be a JSON object")
    ALREADY_ACTIVATED = (409, "the connected registry is already activated")
    NOT_ACTIVATED = (409, "the connected registry is not activated")
    PARENT_NOT_ACTIVATED = (409, "the parent connected registry is not activated")
    # A relaying node's parent: not answering, or answering in a way it cannot use.
    PARENT_UNREACHABLE = (503, "the parent cannot be reached")
    UNTRUSTED_PARENT = (502, "the parent's certificate is not trusted")
    PLAIN_HTTP = (502, "the parent answers in plain HTTP")
    UNEXPECTED_RESPONSE = (502, "the parent's answer is not understood")
    UNKNOWN = (500, "internal error; see the server log")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def default_message(self) -> str:
        return self.value[1]


class OCIError(Exception):
    """A refusal a client can act on. `status` overrides the code's default where the spec does
    (413 for an oversized manifest, 416 for a bad range)."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        detail: Any = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message or code.default_message
        self.detail = detail
        self.status = status or code.status
        self.headers = headers or {}
        super().__init__(f"{code.name}: {self.message}")

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code.name, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"errors": [error]}
