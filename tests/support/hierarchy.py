"""A root registry with devices activated under it, as an operator builds one.

The root is a real `connected-registry serve` process (auth on, loopback HTTP, or HTTPS with the
CA `tls generate` made); its resources and tokens are made in-process on its data directory.
Every device-side step is the real command in a child process. The `root` and `https_root`
fixtures are registered for every test by tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from appliance.auth.certificates import ca_fingerprint
from appliance.auth.scopes import PUSH, Permission
from appliance.auth.tokens import Credentials
from appliance.control.connection_string import ConnectionString
from appliance.control.hierarchy import Hierarchy
from appliance.control.node import NodeState
from appliance.storage.layout import Layout
from appliance.storage.store import Store
from support.cli import run
from support.server import RegistryProcess

StartRegistry = Callable[..., RegistryProcess]

PULL = frozenset({"content/read", "metadata/read"})
# Push, list and delete: the client deletes tags on the device too.
WRITER = PUSH | {"metadata/read", "content/delete"}


def activate(
    device: Path, connection: str | ConnectionString, *args: str
) -> subprocess.CompletedProcess[str]:
    return run(
        "activate", "--data-dir", str(device), "--connection-string", str(connection),
        "--yes", "--no-start", *args,
    )


def node_state(data_dir: Path) -> dict[str, str]:
    store = Store(data_dir)
    try:
        return dict(store.conn.execute("SELECT key, value FROM node_state"))
    finally:
        store.close()


@dataclass
class Root:
    """A root registry process and its database, opened in-process for management."""

    server: RegistryProcess
    store: Store
    credentials: Credentials
    hierarchy: Hierarchy
    client_password: str
    protocol: str = "http"
    fingerprint: str | None = None

    def create(self, name: str, repositories: list[str], **kwargs: object) -> str:
        """A connected registry and a password for its sync token."""
        self.hierarchy.create(name, repositories, **kwargs)  # type: ignore[arg-type]
        return self.credentials.generate_password(name, "password1")

    def connection(self, name: str, password: str, **changes: object) -> ConnectionString:
        fields: dict[str, object] = {
            "registry_name": name, "token_name": name, "password": password,
            "host": "127.0.0.1", "port": self.server.port, "protocol": self.protocol,
            "fingerprint": self.fingerprint,
        }
        fields.update(changes)
        return ConnectionString(**fields)  # type: ignore[arg-type]

    def status(self, name: str) -> str:
        return self.hierarchy.get(name).activation_status


def make_root(start_registry: StartRegistry, data: Path, args: list[str]) -> Root:
    server = start_registry(data_dir=data, args=args)
    store = Store(data)
    node = NodeState(store)
    node.set("role", "cloud")
    node.set("login_server", server.host)
    credentials = Credentials(store.db)
    credentials.create_scope_map("demo-pull", (Permission("demo/*", PULL),))
    _, passwords = credentials.create_token("client01", "demo-pull")
    return Root(server, store, credentials, Hierarchy(store, credentials), passwords["password1"])


@pytest.fixture
def root(start_registry: StartRegistry, tmp_path: Path) -> Iterator[Root]:
    """A root served with auth over loopback HTTP, in tmp_path/root."""
    made = make_root(start_registry, tmp_path / "root", ["--auth", "--insecure-http"])
    yield made
    made.store.close()


@pytest.fixture
def https_root(start_registry: StartRegistry, tmp_path: Path) -> Iterator[Root]:
    data = tmp_path / "root"
    generated = run("tls", "generate", "--data-dir", str(data), "--host", "127.0.0.1")
    assert generated.returncode == 0, generated.stderr
    layout = Layout(data)
    made = make_root(
        start_registry, data,
        [
            "--auth",
            "--tls-cert", str(layout.tls_server_cert),
            "--tls-key", str(layout.tls_server_key),
        ],
    )
    made.protocol = "https"
    made.fingerprint = ca_fingerprint(layout)
    yield made
    made.store.close()


def writer(root: Root) -> dict[str, str]:
    """A client token on the root with content/write on demo/*; the device gets it too."""
    root.credentials.create_scope_map("demo-write", (Permission("demo/*", WRITER),))
    _, passwords = root.credentials.create_token("writer", "demo-write")
    return {"Authorization": aiohttp.encode_basic_auth("writer", passwords["password1"])}


async def read_write_device(root: Root, tmp_path: Path, **kw: object) -> Path:
    """edge01, ReadWrite on demo/* with the `writer` client token, activated in tmp_path/device."""
    password = root.create("edge01", ["demo/*"], mode="ReadWrite", client_tokens=["writer"], **kw)
    device = tmp_path / "device"
    activated = await asyncio.to_thread(activate, device, root.connection("edge01", password))
    assert activated.returncode == 0, activated.stderr
    return device
