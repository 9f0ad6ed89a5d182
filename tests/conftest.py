"""Shared fixtures: the real server, started as a process on loopback.

Every API test talks HTTP to `connected-registry serve` running in a child process, the way a
client on the device would. `registry` is one server shared by the session (tests use their own
repository names, from the `repo` fixture); `start_registry` starts a private one for tests that
kill, restart or configure it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RegistryProcess:
    """`connected-registry serve` in a child process, on a loopback port of its own."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> RegistryProcess:
        env = dict(os.environ)
        env.pop("CONNECTED_REGISTRY_CONFIG", None)
        env.pop("CONNECTED_REGISTRY_DATA_DIR", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve", "--listen", self.host,
             "--data-dir", str(self.data_dir), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start within {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: what a power cut or an OOM kill looks like to the process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> RegistryProcess:
        self.stop()
        return self.start()


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
