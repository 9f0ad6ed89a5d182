"""Token passwords: generated strong, shown once, stored only as a hash.

Two schemes, told apart by the stored hash's prefix. A generated password (`generate_password`:
32 random bytes) is stored as a salted SHA-256 (`sha256$salt$digest`, `hash_generated`): 256
bits cannot be guessed however fast each guess is, so a slow KDF buys nothing and would cost
every device's authentication ~0.1 s and 32 MiB (ARCHITECTURE.md, "device authentication").
The hash is unkeyed on purpose: it travels in the settings to descendants, which check their
own descendants' relayed calls against it (registry/relay.py) and hold no key of this node's.
Every token password is generated, so every new hash is the fast one; scrypt hashes stored
before it keep verifying, and `hash_password` (scrypt) stays for a password a person chooses.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

# scrypt N=2^15, r=8, p=1: about 0.1 s and 32 MiB per check, so a stolen database is expensive
# to attack; the credential cache keeps it off the hot path.
_N, _R, _P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024
# URL-safe alphabet, no `;` or `=`, so a password can sit in a connection string (PROTOCOL.md §1).
PASSWORD_BYTES = 32
# The prefix of a generated password's fast hash.
FAST_SCHEME = "sha256"
# Checks running at once: bounds their memory (32 MiB each) and leaves a core to the event loop.
CHECK_WORKERS = 2


def generate_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES).replace("=", "")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_generated(password: str) -> str:
    """The stored hash of a password made by `generate_password` (and only of one)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.sha256(salt + password.encode()).digest()
    return f"{FAST_SCHEME}${_b64(salt)}${_b64(digest)}"


def is_fast(stored: str) -> bool:
    """Whether `stored` is checked in microseconds (no thread, no cache needed)."""
    return stored.startswith(FAST_SCHEME + "$")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    if is_fast(stored):
        try:
            _, salt, expected = stored.split("$")
            digest = hashlib.sha256(base64.b64decode(salt) + password.encode()).digest()
            return hmac.compare_digest(digest, base64.b64decode(expected))
        except (ValueError, TypeError):  # binascii.Error is a ValueError
            return False
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, base64.b64decode(expected))


class PasswordChecks:
    """`verify_password` off the event loop, on threads of its own: at most `workers` checks run
    at once (the rest queue), and none holds a thread of the default executor that writes blobs.
    Threads start on the first check; `close` joins them."""

    def __init__(self, workers: int = CHECK_WORKERS) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="password-check")

    async def verify(self, password: str, stored: str) -> bool:
        if is_fast(stored):
            log.debug("checking a password against its sha256 hash")
            return verify_password(password, stored)
        log.debug("checking a password against its scrypt hash")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, verify_password, password, stored)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
