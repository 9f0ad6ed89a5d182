"""Is this the password of this token? Checked against its hashes (scrypt, or the fast hash of a
generated password: auth/passwords.py), with the verdict cached so Basic auth on every request
does not cost a scrypt each.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from time import monotonic

from appliance.auth.passwords import PasswordChecks
from appliance.storage.timestamps import utc_now
from appliance.storage.tokens import Token

# A verified password is trusted this long before its slow hash is checked again.
CREDENTIAL_CACHE_SECONDS = 60.0
# From this age on a cached verdict is still served while one check renews it in the background,
# so credentials in steady use never make a request wait for scrypt.
CREDENTIAL_REFRESH_SECONDS = 0.8 * CREDENTIAL_CACHE_SECONDS
_CACHE_LIMIT = 50000


class CredentialChecks:
    """The verdicts on (token, password) pairs, each reached by one scrypt check."""

    def __init__(self, passwords: PasswordChecks, clock: Callable[[], datetime] = utc_now) -> None:
        self.passwords = passwords
        # What passwords expire against; a test moves it rather than wait.
        self.clock = clock
        self._cache_key = secrets.token_bytes(32)
        self._cache: dict[bytes, _Verdict] = {}
        self._checking: dict[bytes, asyncio.Task[_Verdict]] = {}

    async def check(self, token: Token, password: str) -> Token | None:
        """The token if `password` is one of its unexpired passwords, else None; `token` is
        enabled (the caller looked).

        A verdict is cached for `CREDENTIAL_CACHE_SECONDS` under an HMAC of the credentials, so
        Basic auth on every request costs one scrypt a minute; in its last fifth it is renewed
        by one check in the background while it is still served. Concurrent requests with the
        same credentials share one check. The cache holds which password slot matched and its
        hash: rotating or deleting that password, disabling the token or letting the password
        expire takes effect at once, cache or not.
        """
        credentials = f"{token.name}\0{password}".encode()
        key = hmac.new(self._cache_key, credentials, hashlib.sha256).digest()
        verdict = self._cache.get(key)
        if (
            verdict is None
            or verdict.age() >= CREDENTIAL_CACHE_SECONDS
            or not verdict.holds_for(token)
        ):
            # Shielded: a request given up on must not cancel the check others are waiting for.
            verdict = await asyncio.shield(self._check(key, token, password))
            if not verdict.holds_for(token):
                return None  # the token's passwords changed while the check ran
        elif verdict.age() >= CREDENTIAL_REFRESH_SECONDS:
            self._check(key, token, password)
        return verdict.answer(token, self.clock())

    def _check(self, key: bytes, token: Token, password: str) -> asyncio.Task[_Verdict]:
        """The check of these credentials in flight, started if there is none."""
        task = self._checking.get(key)
        if task is None:
            task = asyncio.create_task(self._verify(key, token, password))
            self._checking[key] = task
            task.add_done_callback(lambda _: self._checking.pop(key, None))
        return task

    async def _verify(self, key: bytes, token: Token, password: str) -> _Verdict:
        now = self.clock()
        for slot in token.passwords:
            if not slot.expired(now) and await self.passwords.verify(password, slot.hash):
                verdict = _Verdict(slot.name, slot.hash, monotonic())
                break
        else:
            verdict = _Verdict(None, _fingerprint(token), monotonic())
        if len(self._cache) >= _CACHE_LIMIT:
            # The oldest verdict goes, not all: a fleet larger than the cache must not turn
            # every wipe into a burst of checks.
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = verdict
        return verdict

    async def close(self) -> None:
        """Stop the checks in flight and the threads that run them."""
        for task in list(self._checking.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.passwords.close()


@dataclass(frozen=True)
class _Verdict:
    """What one check of a password found: the slot it matched (None: none) and what it was
    checked against (that slot's hash, or all the token's hashes), at `monotonic()` time `at`."""

    slot: str | None
    checked: str
    at: float

    def age(self) -> float:
        return monotonic() - self.at

    def holds_for(self, token: Token) -> bool:
        """Whether the token still has the passwords this verdict was reached on."""
        if self.slot is None:
            return self.checked == _fingerprint(token)
        return any(s.name == self.slot and s.hash == self.checked for s in token.passwords)

    def answer(self, token: Token, now: datetime) -> Token | None:
        """The token if the password matched a slot that has not expired since; a verdict
        that `holds_for` the token only."""
        if self.slot is None:
            return None
        slot = next(s for s in token.passwords if s.name == self.slot)
        return None if slot.expired(now) else token




def _fingerprint(token: Token) -> str:
    return "|".join(p.hash for p in token.passwords)
