"""Digests: `algorithm:hex`. Only sha256 is accepted, everywhere."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from appliance.oci.errors import ErrorCode, OCIError

DIGEST_PATTERN = r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+"
_SHA256_HEX = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated sha256 digest. `hex` is safe to use in a file path."""

    hex: str

    @property
    def algorithm(self) -> str:
        return "sha256"

    def __str__(self) -> str:
        return f"sha256:{self.hex}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, sep, encoded = text.partition(":")
        if not sep or not re.fullmatch(DIGEST_PATTERN, text):
            raise OCIError(
                ErrorCode.DIGEST_INVALID,
                "digest must be of the form sha256:<64 hex characters>",
                detail={"digest": text[:300]},
            )
        if algorithm != "sha256":
            raise OCIError(
                ErrorCode.DIGEST_INVALID,
                f"digest algorithm {algorithm!r} is not supported; only sha256 is",
                detail={"digest": text[:300]},
            )
        if not _SHA256_HEX.fullmatch(encoded):
            raise OCIError(
                ErrorCode.DIGEST_INVALID,
                "a sha256 digest has 64 lower-case hex characters",
                detail={"digest": text[:300]},
            )
        return cls(encoded)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(hashlib.sha256(data).hexdigest())

