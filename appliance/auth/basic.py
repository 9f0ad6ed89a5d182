"""HTTP Basic credentials, read from an `Authorization` header the same way by every API."""

from __future__ import annotations

import base64


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """Name and password of a Basic `Authorization` header; None when it holds no Basic
    credentials (absent, or another scheme). Malformed credentials (not base64, not ASCII, not
    UTF-8, no colon) are ("", ""), which fail authentication as a 401, never a 500."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except ValueError:
        # binascii.Error, UnicodeDecodeError, and the ValueError b64decode raises for a
        # header with non-ASCII characters (aiohttp keeps such bytes as surrogates).
        decoded = ""
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else ("", "")
