
"""What the sync tests share: Debian's `docker-registry` (CNCF distribution) as a plain
upstream with htpasswd Basic auth, the `sync` command in a child process, pushing with Basic
credentials, and a parent that accepts connections and never answers."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from support.cli import clean_env
from support.server import free_port

DOCKER_REGISTRY = "/usr/bin/docker-registry"


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd line (distribution accepts only bcrypt), from libcrypt through the
    standard library: no extra package for CI."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2**5))}"


class DistributionRegistry:
    """`docker-registry serve` on loopback with filesystem storage and deletes enabled."""

    def __init__(
        self,
        folder: Path,
        user: str | None = None,
        password: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ):
        """`tls`: (certificate, key) files to serve HTTPS with."""
        self.folder = folder
        self.tls = tls
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        auth = ""
        if user is not None and password is not None:
            (folder / "htpasswd").write_text(htpasswd_line(user, password) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {folder / 'htpasswd'}\n"
        (folder / "config.yml").write_text(
            "version: 0.1\n"
            "log:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {folder / 'storage'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            + (f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else "")
            + auth
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> DistributionRegistry:
        log = open(self.folder / "registry.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [DOCKER_REGISTRY, "serve", str(self.folder / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.folder / "registry.log").read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def run_sync(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`connected-registry sync ARGS` in a child process, as the timer runs it."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", "sync", *args],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sync_json(*args: str) -> dict:
    result = run_sync(*args, "--output", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


async def get(session: aiohttp.ClientSession, url: str, accept: str = "*/*") -> tuple[bytes, dict]:
    async with session.get(url, headers={"Accept": accept}) as response:
        assert response.status == 200, (url, response.status, await response.text())
        return await response.read(), dict(response.headers)


@dataclass
class SilentParent:
    """A parent that accepts connections and never answers: a hung process, or a black hole
    behind a site's proxy. Counts the connections it was asked on."""

    port: int
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _server: asyncio.Server | None = None

    @property
    def connections(self) -> int:
        return len(self._writers)

    async def start(self) -> SilentParent:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in self._writers:
            writer.close()

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)  # and never a byte back
