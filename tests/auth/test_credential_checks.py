"""Password checks under load: one scrypt per credentials at a time, renewed before the cached
verdict expires, and revocation still immediate.

The first test counts the server's own debug line per scrypt run over HTTP. The others drive
`Credentials` on a real store with a clock the test moves and checks it can hold, because a
cache minute is too long to wait for and "no request waited" is only provable by holding the check.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from support.auth import ALL_ACTIONS, auth_server, write_config

from appliance.auth import credential_checks
from appliance.auth.credential_checks import CREDENTIAL_CACHE_SECONDS, CREDENTIAL_REFRESH_SECONDS
from appliance.auth.passwords import (
    PasswordChecks,
    generate_password,
    hash_generated,
    hash_password,
    verify_password,
)
from appliance.auth.tokens import Credentials, parse_permissions
from appliance.storage.store import Store

# Logged once per password check, whatever the hash scheme.
CHECK_LINE = "checking a password against its "
# Bounds a hang (an answer that waited for a held check) so it fails instead; not a speed limit.
HANG = 30


async def test_concurrent_requests_with_fresh_credentials_run_one_scrypt(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", 'log_level = "debug"\n[auth]\nenabled = true\n')
    with auth_server(tmp_path / "data", ["--config", str(config)]) as server:
        token = server.make_token("crowd", [("team/*", ALL_ACTIONS)])
        url = f"{server.url}/v2/team/app/tags/list"
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, headers={"Authorization": token.header}
        ) as http:

            async def get() -> int:
                async with http.get(url) as resp:
                    await resp.read()
                    return resp.status

            first = await asyncio.gather(*(get() for _ in range(40)))
            again = await asyncio.gather(*(get() for _ in range(40)))
        server.process.stop()
        log = server.process.log()
    assert first == [404] * 40 and again == [404] * 40  # authenticated: the repository is unknown
    assert log.count(CHECK_LINE) == 1


class HeldChecks(PasswordChecks):
    """The real scrypt checks, counted, each waiting until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self.gate = asyncio.Event()
        self.finished = asyncio.Event()

    async def verify(self, password: str, stored: str) -> bool:
        self.started += 1
        await self.gate.wait()
        matched = await super().verify(password, stored)
        self.finished.set()
        return matched


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(credential_checks, "monotonic", clock)
    return clock


@pytest.fixture
def checks() -> HeldChecks:
    return HeldChecks()


@pytest.fixture
async def credentials(tmp_path: Path, checks: HeldChecks) -> AsyncIterator[Credentials]:
    store = Store(tmp_path / "data")
    credentials = Credentials(store.db, password_checks=checks)
    credentials.create_scope_map("team-map", parse_permissions([("team/*", ["content/read"])]))
    yield credentials
    await credentials.close()
    store.close()


def make_token(credentials: Credentials) -> str:
    _, passwords = credentials.create_token("client", "team-map")
    return passwords["password1"]


async def test_requests_arriving_when_the_cache_expired_share_one_check(
    credentials: Credentials, checks: HeldChecks, clock: Clock
) -> None:
    password = make_token(credentials)
    checks.gate.set()
    assert await credentials.authenticate("client", password) is not None
    clock.now += CREDENTIAL_CACHE_SECONDS + 1
    answers = await asyncio.gather(
        *(credentials.authenticate("client", password) for _ in range(20))
    )
    assert all(answer is not None for answer in answers)
    assert checks.started == 2


async def test_a_verdict_near_expiry_is_renewed_in_the_background_while_requests_are_served(
    credentials: Credentials, checks: HeldChecks, clock: Clock
) -> None:
    password = make_token(credentials)
    checks.gate.set()
    assert await credentials.authenticate("client", password) is not None
    checks.gate.clear()
    checks.finished.clear()
    clock.now += CREDENTIAL_REFRESH_SECONDS + 1
    for _ in range(5):  # the renewal is held: these are answered without it
        answer = await asyncio.wait_for(credentials.authenticate("client", password), HANG)
        assert answer is not None and answer.name == "client"
    assert checks.started == 2
    checks.gate.set()
    await asyncio.wait_for(checks.finished.wait(), HANG)
    checks.gate.clear()
    clock.now += CREDENTIAL_CACHE_SECONDS - CREDENTIAL_REFRESH_SECONDS  # past the first expiry
    assert await asyncio.wait_for(credentials.authenticate("client", password), HANG)
    assert checks.started == 2


async def test_a_deleted_password_is_refused_at_once_inside_the_renewal_window(
    credentials: Credentials, checks: HeldChecks, clock: Clock
) -> None:
    password = make_token(credentials)
    checks.gate.set()
    assert await credentials.authenticate("client", password) is not None
    clock.now += CREDENTIAL_REFRESH_SECONDS + 1
    credentials.delete_password("client", "password1")
    assert await credentials.authenticate("client", password) is None


async def test_a_disabled_token_is_refused_at_once_inside_the_renewal_window(
    credentials: Credentials, checks: HeldChecks, clock: Clock
) -> None:
    password = make_token(credentials)
    checks.gate.set()
    assert await credentials.authenticate("client", password) is not None
    clock.now += CREDENTIAL_REFRESH_SECONDS + 1
    credentials.update_token("client", status="disabled")
    assert await credentials.authenticate("client", password) is None
    assert checks.started == 1


async def test_a_password_deleted_during_its_check_is_refused_to_requests_that_join_it(
    credentials: Credentials, checks: HeldChecks, clock: Clock
) -> None:
    password = make_token(credentials)
    first = asyncio.create_task(credentials.authenticate("client", password))
    while checks.started == 0:
        await asyncio.sleep(0)
    credentials.delete_password("client", "password1")
    joined = asyncio.create_task(credentials.authenticate("client", password))
    await asyncio.sleep(0)
    checks.gate.set()
    await first
    assert await joined is None
    assert checks.started == 1


async def test_a_request_given_up_on_does_not_cancel_the_check_others_wait_for(
    credentials: Credentials, checks: HeldChecks, clock: Clock
) -> None:
    password = make_token(credentials)
    abandoned = asyncio.create_task(credentials.authenticate("client", password))
    waiting = asyncio.create_task(credentials.authenticate("client", password))
    while checks.started == 0:
        await asyncio.sleep(0)
    abandoned.cancel()
    checks.gate.set()
    assert await waiting is not None
    assert abandoned.cancelled()
    assert checks.started == 1


def test_generated_passwords_get_the_fast_hash_and_old_scrypt_hashes_still_verify() -> None:
    password = generate_password()
    fast = hash_generated(password)
    slow = hash_password(password)
    assert fast.startswith("sha256$") and slow.startswith("scrypt$")
    assert verify_password(password, fast) and verify_password(password, slow)
    assert not verify_password(password + "x", fast)
    assert not verify_password(password, "sha256$not-base64$")
    salt = fast.split("$")[1]
    assert not verify_password(password, f"sha256${salt}$not-base64")


async def test_a_token_made_now_stores_the_fast_hash_and_a_scrypt_one_still_authenticates(
    credentials: Credentials, checks: HeldChecks
) -> None:
    checks.gate.set()
    password = make_token(credentials)
    assert all(p.hash.startswith("sha256$") for p in credentials.token("client").passwords)
    assert await credentials.authenticate("client", password) is not None
    legacy = generate_password()
    with credentials.records.transaction():  # a hash stored before the fast scheme existed
        credentials.records.set_password("client", "password2", hash_password(legacy), None, "x")
    assert await credentials.authenticate("client", legacy) is not None
