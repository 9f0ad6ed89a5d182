"""Activation of a connected registry against a real root, as an operator does it.

The root is a real `connected-registry serve` process (auth on, loopback HTTP, or HTTPS with the
CA `tls generate` made); its resources and tokens are made in-process on its data directory.
Every device-side step is the real command in a child process; what the tests assert is what
the operator sees (exit code, the one error line) and what is on disk afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from appliance.auth.certificates import ca_fingerprint
from appliance.auth.scopes import Permission
from appliance.auth.tokens import Credentials
from appliance.control.connection_string import ConnectionString
from appliance.control.hierarchy import ALREADY_ACTIVATED_MESSAGE, Hierarchy
from appliance.control.node import NodeState
from appliance.storage.layout import Layout
from appliance.storage.store import Store

if TYPE_CHECKING:
    from conftest import RegistryProcess

    StartRegistry = Callable[..., RegistryProcess]

PROJECT = Path(__file__).resolve().parents[2]
PULL = frozenset({"content/read", "metadata/read"})


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTED_REGISTRY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, without a terminal (stdin is /dev/null)."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        env=env or clean_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=90,
    )


def activate(
    device: Path, connection: str | ConnectionString, *args: str
) -> subprocess.CompletedProcess[str]:
    return run(
        "activate", "--data-dir", str(device), "--connection-string", str(connection),
        "--yes", "--no-start", *args,
    )


def snapshot(folder: Path) -> dict[str, tuple[int, str]] | None:
    """Every file under `folder` with its mode and content hash; None if it does not exist."""
    if not folder.exists():
        return None
    return {
        str(path.relative_to(folder)): (
            path.stat().st_mode,
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "",
        )
        for path in sorted(folder.rglob("*"))
    }


def node_state(data_dir: Path) -> dict[str, str]:
    store = Store(data_dir)
    try:
        return dict(store.conn.execute("SELECT key, value FROM node_state"))
    finally:
        store.close()


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


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


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def http_status(url: str, authorization: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": authorization})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


# --- success ---------------------------------------------------------------------------------


def test_activation_claims_the_registry_and_writes_its_state(root: Root, tmp_path: Path) -> None:
    password = root.create("edge01", ["demo/*"], mode="ReadOnly", client_tokens=["client01"])
    device = tmp_path / "device"
    connection = root.connection("edge01", password)

    env = clean_env(CONNECTED_REGISTRY_CONNECTION_STRING=str(connection))
    result = run(
        "activate", "--data-dir", str(device), "--yes", "--no-start",
        "--login-server", "edge01.example:8443", env=env,
    )

    assert result.returncode == 0, result.stderr
    assert "Activated edge01 (ReadOnly)" in result.stdout
    assert password not in result.stdout + result.stderr
    assert "SyncTokenPassword=***" in result.stdout
    state = node_state(device)
    assert state["role"] == "connected"
    assert state["name"] == "edge01"
    assert state["mode"] == "ReadOnly"
    assert state["parent_endpoint"] == root.server.host
    assert state["parent_protocol"] == "http"
    assert state["sync_token"] == "edge01"
    assert state["login_server"] == "edge01.example:8443"
    assert state["activated_at"]
    assert json.loads(state["settings"])["repositories"] == ["demo/*"]
    assert state["settings_etag"].startswith('"')
    secret = device / "secrets" / "sync-token"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert json.loads(secret.read_text()) == {"token": "edge01", "password": password}
    assert stat.S_IMODE((device / "secrets" / "tls-server.key").stat().st_mode) == 0o600
    assert (device / "tls" / "server.crt").exists()
    cr = root.hierarchy.get("edge01")
    assert cr.activation_status == "Active"
    assert cr.instance_id == state["instance_id"]
    assert cr.login_server == "edge01.example:8443"


def test_client_tokens_from_the_settings_log_in_on_the_device(
    root: Root, tmp_path: Path, start_registry: StartRegistry
) -> None:
    password = root.create("edge01", ["demo/*"], client_tokens=["client01"])
    device = tmp_path / "device"
    assert activate(device, root.connection("edge01", password)).returncode == 0
    store = Store(device)
    token = Credentials(store.db).token("client01")
    store.close()
    assert token.origin == "parent"

    server = start_registry(data_dir=device, args=["--auth", "--insecure-http"])
    url = f"{server.url}/v2/demo/app/tags/list"

    # The repository is empty, so an authorized caller gets 404; a refused one 401.
    assert http_status(url, basic("client01", root.client_password)) == 404
    assert http_status(url, basic("client01", "not-the-password")) == 401
    assert http_status(f"{server.url}/v2/", basic("client01", root.client_password)) == 200


def test_a_relaying_device_refuses_malformed_basic_credentials_with_401(
    root: Root, tmp_path: Path, start_registry: StartRegistry
) -> None:
    """The device's gateway relays for its descendants and checks their Basic credentials
    itself: bytes that are not base64 or not UTF-8 are a 401 with a challenge, not a 500."""
    password = root.create("edge01", ["demo/*"])
    device = tmp_path / "device"
    assert activate(device, root.connection("edge01", password)).returncode == 0
    server = start_registry(data_dir=device, args=["--auth", "--insecure-http"])
    # urllib sends a header's characters as latin-1 bytes: these are raw 0xE9 0xFF.
    for authorization in ("Basic \u00e9\u00ff",
                          "Basic " + base64.b64encode(b"\xff\xfe:\x80").decode()):
        request = urllib.request.Request(
            f"{server.url}/gateway/v1/registries/shelf01/settings",
            headers={"Authorization": authorization},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401, refused.value.read()[:300]
        assert json.loads(refused.value.read())["errors"][0]["code"] == "UNAUTHORIZED"
        assert refused.value.headers["WWW-Authenticate"].startswith("Basic ")
    assert "Traceback" not in server.log()


# --- one instance at a time ------------------------------------------------------------------


def test_a_second_instance_gets_already_activated_and_writes_nothing(
    root: Root, tmp_path: Path
) -> None:
    password = root.create("edge01", ["demo/*"])
    connection = root.connection("edge01", password)
    first = tmp_path / "first"
    assert activate(first, connection).returncode == 0
    fresh = tmp_path / "second"
    existing = tmp_path / "dev"
    Store(existing).close()
    before = snapshot(existing)

    for device in (fresh, existing):
        result = activate(device, connection)

        assert result.returncode == 1
        line = one_error_line(result)
        assert line == f"Error: ALREADY_ACTIVATED: {ALREADY_ACTIVATED_MESSAGE}"
        assert result.stdout == ""
    assert not fresh.exists()
    assert snapshot(existing) == before
    assert root.hierarchy.get("edge01").instance_id == node_state(first)["instance_id"]


def test_after_deactivate_another_instance_can_activate(root: Root, tmp_path: Path) -> None:
    password = root.create("edge01", ["demo/*"])
    connection = root.connection("edge01", password)
    first, second = tmp_path / "first", tmp_path / "second"
    assert activate(first, connection).returncode == 0
    assert activate(second, connection).returncode == 1

    result = run("deactivate", "--data-dir", str(first), "--yes")

    assert result.returncode == 0, result.stderr
    assert "Deactivated edge01" in result.stdout
    assert root.status("edge01") == "Inactive"
    state = node_state(first)
    assert "role" not in state and "instance_id" in state
    assert not (first / "secrets" / "sync-token").exists()
    assert activate(second, connection).returncode == 0
    assert root.hierarchy.get("edge01").instance_id == node_state(second)["instance_id"]


def test_the_same_data_directory_is_always_the_same_instance(root: Root, tmp_path: Path) -> None:
    password = root.create("edge01", ["demo/*"])
    connection = root.connection("edge01", password)
    device = tmp_path / "device"
    assert activate(device, connection).returncode == 0
    instance = node_state(device)["instance_id"]
    assert run("deactivate", "--data-dir", str(device), "--yes").returncode == 0

    assert activate(device, connection).returncode == 0

    assert node_state(device)["instance_id"] == instance
    assert root.hierarchy.get("edge01").instance_id == instance


def test_activating_again_changes_nothing_and_needs_no_network(root: Root, tmp_path: Path) -> None:
    password = root.create("edge01", ["demo/*"])
    device = tmp_path / "device"
    string_file = tmp_path / "connection-string"
    string_file.write_text(str(root.connection("edge01", password)) + "\n")
    first = run(
        "activate", "--data-dir", str(device), "--connection-string-file", str(string_file),
        "--yes", "--no-start",
    )
    assert first.returncode == 0, first.stderr
    state = node_state(device)
    root.server.stop()

    again = run(
        "activate", "--data-dir", str(device), "--connection-string-file", str(string_file),
        "--yes", "--no-start",
    )

    assert again.returncode == 0, again.stderr
    assert "already activated" in again.stdout and "nothing changed" in again.stdout
    assert node_state(device) == state


def test_a_node_active_for_one_registry_refuses_another(root: Root, tmp_path: Path) -> None:
    one = root.create("edge01", ["demo/*"])
    other = root.create("edge02", ["demo/*"])
    device = tmp_path / "device"
    assert activate(device, root.connection("edge01", one)).returncode == 0

    result = activate(device, root.connection("edge02", other))

    assert result.returncode == 1
    assert one_error_line(result).startswith("Error: NODE_ACTIVATED: ")
    assert root.status("edge02") == "Inactive"


# --- refusals write nothing ------------------------------------------------------------------


def test_a_wrong_password_is_unauthorized_and_writes_nothing(root: Root, tmp_path: Path) -> None:
    root.create("edge01", ["demo/*"])
    device = tmp_path / "device"

    result = activate(device, root.connection("edge01", "x" * 43))

    assert result.returncode == 1
    assert one_error_line(result) == "Error: UNAUTHORIZED: Incorrect Password"
    assert result.stdout == ""
    assert not device.exists()
    assert root.status("edge01") == "Inactive"


def test_an_unreachable_parent_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, root: Root
) -> None:
    from conftest import free_port

    port = free_port()
    device = tmp_path / "device"
    connection = root.connection("edge01", "x" * 43, port=port)

    result = activate(device, connection)

    assert result.returncode == 1
    line = one_error_line(result)
    expected = f"Error: PARENT_UNREACHABLE: cannot reach the parent at 127.0.0.1:{port}: "
    assert line.startswith(expected)
    assert result.stdout == ""
    assert not device.exists()


GOOD = (
    "ConnectedRegistryName=edge01;SyncTokenName=edge01;SyncTokenPassword="
    "abcdefghijklmnopqrstuvwxyz012345;ParentGatewayEndpoint=127.0.0.1:5050;"
    "ParentEndpointProtocol=http"
)


@pytest.mark.parametrize(
    ("connection", "field"),
    [
        (GOOD.replace("SyncTokenName=edge01;", ""), "SyncTokenName is missing"),
        (GOOD + ";Region=eu", "unknown field 'Region'"),
        (GOOD + ";SyncTokenName=edge02", "SyncTokenName is given twice"),
        (GOOD.replace("127.0.0.1:5050", "127.0.0.1"), "ParentGatewayEndpoint"),
        (GOOD.replace("127.0.0.1:5050", "parent.example:443"), "ParentEndpointProtocol http"),
        (GOOD.replace("edge01;SyncToken", "e;SyncToken", 1), "ConnectedRegistryName"),
        (GOOD.replace(":5050", ":\u00b2"), "the port must be a number from 1 to 65535"),
        (GOOD.replace(":5050", ":" + "9" * 5000), "the port must be a number from 1 to 65535"),
        (GOOD.replace(":5050", ":65536"), "the port must be a number from 1 to 65535"),
    ],
    ids=[
        "missing", "unknown", "duplicate", "bad-endpoint", "http-not-loopback", "bad-name",
        "superscript-port", "5000-digit-port", "port-too-big",
    ],
)
def test_a_malformed_connection_string_names_the_field(
    tmp_path: Path, connection: str, field: str
) -> None:
    device = tmp_path / "device"

    result = activate(device, connection)

    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith("Error: invalid connection string: ")
    assert field in line
    assert len(line) < 300
    assert result.stdout == ""
    assert "abcdefghijklmnopqrstuvwxyz012345" not in result.stdout + result.stderr
    assert not device.exists()


def test_a_connection_string_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    string_file = tmp_path / "connection-string"
    string_file.write_bytes(GOOD.encode().replace(b"edge01", b"edge\xff\xfe", 1))
    device = tmp_path / "device"

    result = run(
        "activate", "--data-dir", str(device), "--connection-string-file", str(string_file),
        "--yes", "--no-start",
    )

    assert result.returncode == 2
    assert one_error_line(result) == f"Error: cannot read {string_file}: it is not UTF-8 text"
    assert result.stdout == ""
    assert not device.exists()


@pytest.mark.parametrize("port", ["\u00b2", "9" * 5000, "0"])
def test_a_login_server_with_a_bad_port_is_one_line(tmp_path: Path, port: str) -> None:
    device = tmp_path / "device"

    result = activate(device, GOOD, "--login-server", f"edge01.example:{port}")

    assert result.returncode == 2
    line = one_error_line(result)
    assert "--login-server" in line and "the port must be a number from 1 to 65535" in line
    assert len(line) < 300
    assert result.stdout == ""
    assert not device.exists()


def test_without_a_terminal_or_a_connection_string_activate_says_so(tmp_path: Path) -> None:
    result = run("activate", "--data-dir", str(tmp_path / "device"))

    assert result.returncode == 2
    assert "no connection string" in one_error_line(result)
    assert not (tmp_path / "device").exists()


# --- https parents ---------------------------------------------------------------------------


def test_a_fingerprint_pinned_https_parent_activates(https_root: Root, tmp_path: Path) -> None:
    password = https_root.create("edge01", ["demo/*"])
    device = tmp_path / "device"

    result = activate(device, https_root.connection("edge01", password))

    assert result.returncode == 0, result.stderr
    assert https_root.status("edge01") == "Active"
    pinned = Layout(device).parent_ca_cert
    assert pinned.read_bytes() == Layout(https_root.server.data_dir).tls_ca_cert.read_bytes()
    assert node_state(device)["parent_fingerprint"] == https_root.fingerprint
    # Later calls verify the chain against the pinned CA: deactivate goes through.
    assert run("deactivate", "--data-dir", str(device), "--yes").returncode == 0
    assert https_root.status("edge01") == "Inactive"


def test_a_wrong_fingerprint_is_refused_and_writes_nothing(
    https_root: Root, tmp_path: Path
) -> None:
    password = https_root.create("edge01", ["demo/*"])
    device = tmp_path / "device"

    result = activate(
        device, https_root.connection("edge01", password, fingerprint="sha256:" + "0" * 64)
    )

    assert result.returncode == 1
    assert one_error_line(result).startswith("Error: UNTRUSTED_PARENT: ")
    assert not device.exists()
    assert https_root.status("edge01") == "Inactive"


def test_an_https_parent_needs_a_trusted_chain(https_root: Root, tmp_path: Path) -> None:
    password = https_root.create("edge01", ["demo/*"])
    connection = https_root.connection("edge01", password, fingerprint=None)
    device = tmp_path / "device"

    untrusted = activate(device, connection)
    assert untrusted.returncode == 1
    assert one_error_line(untrusted).startswith("Error: UNTRUSTED_PARENT: ")
    assert not device.exists()

    ca = Layout(https_root.server.data_dir).tls_ca_cert
    trusted = activate(device, connection, "--ca-file", str(ca))
    assert trusted.returncode == 0, trusted.stderr
    assert Layout(device).parent_ca_cert.read_bytes() == ca.read_bytes()


# --- deactivation ----------------------------------------------------------------------------


def test_deactivate_with_the_parent_unreachable_needs_force(root: Root, tmp_path: Path) -> None:
    password = root.create("edge01", ["demo/*"])
    device = tmp_path / "device"
    assert activate(device, root.connection("edge01", password)).returncode == 0
    root.server.stop()

    refused = run("deactivate", "--data-dir", str(device), "--yes")
    assert refused.returncode == 1
    line = one_error_line(refused)
    assert "PARENT_UNREACHABLE: cannot reach the parent" in line and "--force" in line
    assert node_state(device)["role"] == "connected"

    forced = run("deactivate", "--data-dir", str(device), "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "cloud deactivate edge01" in forced.stdout
    assert "role" not in node_state(device)


# --- tokens the parent sends -----------------------------------------------------------------


def test_parent_tokens_are_replaced_and_local_ones_never_touched(tmp_path: Path) -> None:
    store = Store(tmp_path / "device")
    credentials = Credentials(store.db)
    credentials.create_scope_map("local-map", (Permission("mine/*", PULL),))
    credentials.create_token("localtok", "local-map")

    def sent(name: str, scope: str, digest: str) -> dict:
        return {
            "name": name, "status": "enabled",
            "scopeMap": {
                "name": scope,
                "repositories": [{"repository": "demo/*", "actions": sorted(PULL)}],
                "gateways": [],
            },
            "passwordHashes": [{"id": "password1", "hash": digest, "expiry": None}],
        }

    skipped = credentials.replace_from_parent(
        [sent("client01", "demo-pull", "scrypt$1"), sent("localtok", "x-map", "scrypt$2"),
         sent("client02", "local-map", "scrypt$3")]
    )
    assert skipped == ["localtok", "client02"]
    assert credentials.token("client01").passwords[0].hash == "scrypt$1"
    assert credentials.token("localtok").origin == "local"
    assert credentials.scope_map("local-map").permissions == (Permission("mine/*", PULL),)

    assert credentials.replace_from_parent([]) == []
    assert [t.name for t in credentials.tokens()] == ["localtok"]
    assert [m.name for m in credentials.scope_maps()] == ["local-map"]
    store.close()


# --- status ----------------------------------------------------------------------------------


def status(data_dir: Path) -> dict:
    result = run("status", "--data-dir", str(data_dir), "--output", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_shows_the_role_of_each_kind_of_node(root: Root, tmp_path: Path) -> None:
    password = root.create("edge01", ["demo/*"], mode="ReadOnly")
    device, dev = tmp_path / "device", tmp_path / "dev"
    Store(dev).close()
    assert activate(device, root.connection("edge01", password)).returncode == 0

    assert status(dev)["role"] == "development"
    on_root = status(root.server.data_dir)
    assert on_root["role"] == "cloud"
    assert [(c["name"], c["activationStatus"]) for c in on_root["connectedRegistries"]] == [
        ("edge01", "Active")
    ]
    on_device = status(device)
    assert on_device["role"] == "connected"
    assert on_device["name"] == "edge01" and on_device["mode"] == "ReadOnly"
    assert on_device["parent"]["endpoint"] == root.server.host
    assert on_device["activationStatus"] == "Active"
    assert on_device["storage"]["freeBytes"] > 0
    table = run("status", "--data-dir", str(device))
    assert "Role:" in table.stdout and "connected" in table.stdout
    assert f"http://{root.server.host}" in table.stdout
    root_table = run("status", "--data-dir", str(root.server.data_dir)).stdout
    assert "edge01" in root_table and "ReadOnly" in root_table


def test_status_of_a_missing_data_directory_is_one_line(tmp_path: Path) -> None:
    result = run("status", "--data-dir", str(tmp_path / "nothing"))

    assert result.returncode == 1
    assert "no registry in" in one_error_line(result)
    assert not (tmp_path / "nothing").exists()
