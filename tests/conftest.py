"""Shared fixtures: the real server, started as a process on loopback.

Every API test talks HTTP to `connected-registry serve` running in a child process, the way a
client on the device would. `registry` is one server shared by the session (tests use their own
repository names, from the `repo` fixture); `start_registry` starts a private one for tests that
kill, restart or configure it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from support.server import RegistryProcess

pytest_plugins = ["support.hierarchy"]


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    server = RegistryProcess(tmp_path_factory.mktemp("shared") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def start_registry(tmp_path: Path) -> Iterator:
    """Start private servers: `start_registry()` or `start_registry(data_dir=..., args=[...])`."""
    started: list[RegistryProcess] = []

    def start(data_dir: Path | None = None, args: list[str] | None = None) -> RegistryProcess:
        server = RegistryProcess(data_dir or tmp_path / f"data{len(started)}", args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def repo() -> str:
    """A repository name no other test uses, so tests can share one server."""
    return f"test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def http() -> aiohttp.ClientSession:
    async with aiohttp.ClientSession() as session:
        yield session
