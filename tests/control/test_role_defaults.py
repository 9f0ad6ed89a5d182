"""A root or an activated device serves with TLS and auth by default (DESIGN.md §7 "Defaults
by role"); a development node keeps plain HTTP without auth."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp

from appliance.control.node import NodeState
from appliance.storage.store import Store


def _make_root(data_dir: Path) -> None:
    store = Store(data_dir)
    NodeState(store).set("role", "cloud")
    store.close()


async def test_a_root_serves_https_with_auth_without_being_told(
    tmp_path: Path, start_registry
) -> None:
    data_dir = tmp_path / "root"
    _make_root(data_dir)
    subprocess.run(
        [sys.executable, "-m", "appliance", "tls", "generate", "--host", "127.0.0.1",
         "--data-dir", str(data_dir)],
        check=True, capture_output=True,
    )
    server = start_registry(data_dir=data_dir)
    trust = ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.crt"))
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"https://{server.host}/v2/", ssl=trust) as resp,
    ):
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer realm=")


def test_a_root_without_a_certificate_refuses_to_serve_plain_http(tmp_path: Path) -> None:
    data_dir = tmp_path / "root"
    _make_root(data_dir)
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "serve", "--listen", "127.0.0.1:1",
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no TLS certificate" in result.stderr
