"""Repository names, tags and references, validated by the distribution spec's grammar.

Only a value that passed these checks is ever used to build a path or a query.
"""

from __future__ import annotations

import re

from appliance.oci.digests import Digest
from appliance.oci.errors import ErrorCode, OCIError

NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# host + name must fit 255 characters; a name alone of more than that can never be pulled.
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH:
        raise OCIError(
            ErrorCode.NAME_INVALID,
            f"repository name is {len(name)} characters, at most {MAX_NAME_LENGTH} allowed",
        )
    if not NAME_RE.fullmatch(name):
        raise OCIError(
            ErrorCode.NAME_INVALID,
            "repository name must be lower-case path components of [a-z0-9] separated by "
            "'.', '_', '__' or '-', joined by '/'",
            detail={"name": name[:300]},
        )
    return name


def is_tag(reference: str) -> bool:
    return TAG_RE.fullmatch(reference) is not None


def validate_tag(tag: str) -> str:
    if not is_tag(tag):
        raise OCIError(
            ErrorCode.MANIFEST_INVALID,
            "tag must match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}",
            detail={"tag": tag[:300]},
        )
    return tag


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference is a tag or a digest; anything else is refused (400)."""
    if ":" in reference:
        return Digest.parse(reference)
    if is_tag(reference):
        return reference
    raise OCIError(
        ErrorCode.MANIFEST_INVALID,
        "reference must be a tag ([a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}) or a sha256 digest",
        detail={"reference": reference[:300]},
    )
