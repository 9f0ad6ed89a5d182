"""Bearer tokens: short-lived ES256 JWTs the token endpoint issues and `/v2/` verifies.

The signing key is made on first start and kept in `secrets/` (0600). Claims are the Docker
token spec's — `iss`, `sub`, `aud` (the service), `exp`, `nbf`, `iat`, `jti` — and
`access: [{type, name, actions}]`, whose actions are ours (`content/read`, …), the exact grant:
this registry is the only party that reads them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "connected-registry"
ALGORITHM = "ES256"
ACCESS_TOKEN_SECONDS = 300
REFRESH_TOKEN_SECONDS = 24 * 3600
# Clocks of a client and this device may disagree a little; `nbf`/`exp` allow this much.
LEEWAY_SECONDS = 10
_VERIFIED_LIMIT = 10000


class InvalidToken(Exception):
    pass


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The registry's signing key; made (0600 from the start) if absent.

    The new key is written to a fresh temporary file and hard-linked into place, which fails if
    another process (the service, a CLI command) made one meanwhile: then theirs is used, so
    every process signs with the same key.
    """
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key


class TokenAuthority:
    """Issues and verifies this registry's bearer tokens."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self._public = key.public_key()
        der = self._public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = base64.b32encode(hashlib.sha256(der).digest()[:15]).decode()
        self._verified: dict[str, dict[str, Any]] = {}

    def issue(
        self,
        subject: str,
        audience: str,
        access: list[dict[str, Any]],
        lifetime: int = ACCESS_TOKEN_SECONDS,
        refresh: bool = False,
    ) -> tuple[str, int]:
        """A signed token and its issue time (seconds since the epoch)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": subject,
            "aud": audience,
            "exp": now + lifetime,
            "nbf": now,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        if refresh:
            claims["use"] = "refresh"
        token = jwt.encode(
            claims, self._key, algorithm=ALGORITHM, headers={"kid": self.key_id, "typ": "JWT"}
        )
        return token, now

    def verify(self, token: str, audience: str, refresh: bool = False) -> dict[str, Any]:
        """The claims of a token this registry issued for `audience`, still valid now.

        Only ES256 with our key is accepted (never `none`, never another key); `exp`, `nbf`,
        `iat`, `aud`, `iss` and `sub` must all be present.
        """
        if not token.isascii():
            # A JWT is base64url and dots; PyJWT would fail to encode other text, not refuse it.
            raise InvalidToken("not a JWT: it has non-ASCII characters")
        claims = self._verified.get(token)
        if claims is None:
            try:
                claims = jwt.decode(
                    token,
                    self._public,
                    algorithms=[ALGORITHM],
                    audience=audience,
                    issuer=ISSUER,
                    leeway=LEEWAY_SECONDS,
                    options={"require": ["exp", "nbf", "iat", "aud", "iss", "sub"]},
                )
            except jwt.PyJWTError as err:
                raise InvalidToken(str(err)) from None
            if len(self._verified) >= _VERIFIED_LIMIT:
                self._verified.clear()
            self._verified[token] = claims
        now = time.time()
        if claims["exp"] + LEEWAY_SECONDS <= now:
            self._verified.pop(token, None)
            raise InvalidToken("token has expired")
        aud = claims["aud"]
        if not (aud == audience if isinstance(aud, str) else audience in aud):
            raise InvalidToken("token is for another service")
        if (claims.get("use") == "refresh") != refresh:
            raise InvalidToken("wrong kind of token")
        return claims
