"""A three-level hierarchy end to end, with real processes on loopback.

root (`cloud init`, served with auth over loopback HTTP, `[hierarchy] offline_after = "PT10M"`)
  └─ edge01 (ReadWrite; activated against the root, served on its own data directory)
       └─ shelf01 (ReadOnly; created on the root *after* edge01 activated, activated through
                   edge01, which relays its gateway calls upward)

The tests share the hierarchy (module scope) and run in file order; the last one stops and
restarts the root. Device-side gateway calls that no command makes yet (status reports, settings
polls: `sync` does that later) go through `GatewayClient.for_node` on the device's data dir.
Time passing (a registry going Offline, contact moving its stamp on) is the root's `Hierarchy` on
its database with a clock the test sets, not a wait.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.cli import run
from support.hierarchy import node_state
from support.server import RegistryProcess

from appliance.auth.tokens import Credentials
from appliance.control.connection_string import parse
from appliance.control.gateway_client import GatewayClient, GatewayError
from appliance.control.hierarchy import Hierarchy
from appliance.control.node import NodeState
from appliance.storage.store import Store

SECURE_LOCAL = ["--auth", "--insecure-http"]
OFFLINE_AFTER = timedelta(minutes=10)


def ok(*args: str) -> str:
    result = run(*args)
    assert result.returncode == 0, f"`{' '.join(args)}` exited {result.returncode}: {result.stderr}"
    return result.stdout


@dataclass
class Tree:
    root: RegistryProcess
    root_config: Path
    edge: RegistryProcess
    shelf_dir: Path
    shelf_connection: str
    tmp: Path
    servers: list[RegistryProcess] = field(default_factory=list)

    def cloud(self, *args: str) -> Any:
        where = ["--data-dir", str(self.root.data_dir), "--config", str(self.root_config)]
        return json.loads(ok("cloud", *args, *where, "--output", "json"))

    def show(self, name: str) -> dict[str, Any]:
        return self.cloud("show", name)

    @contextmanager
    def root_at(self, moment: datetime) -> Iterator[Hierarchy]:
        """The root's hierarchy on its database, with its clock stopped at `moment`."""
        store = Store(self.root.data_dir)
        try:
            credentials = Credentials(store.db)
            yield Hierarchy(store, credentials, offline_after=OFFLINE_AFTER, clock=lambda: moment)
        finally:
            store.close()

    def get_settings(self, name: str) -> str:
        made = self.cloud(
            "get-settings", name, "--parent-protocol", "http", "--generate-password", "1", "--yes"
        )
        return made["connectionString"]


def device_call(data_dir: Path, call: str, *args: Any) -> Any:
    """`report_status`, `settings`, … of the device's own gateway client."""

    async def go() -> Any:
        store = Store(data_dir)
        try:
            async with GatewayClient.for_node(store) as client:
                return await getattr(client, call)(*args)
        finally:
            store.close()

    return asyncio.run(go())


def activate(data_dir: Path, connection: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(
        "activate",
        "--data-dir",
        str(data_dir),
        "--connection-string",
        connection,
        "--yes",
        "--no-start",
        *args,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    tmp = tmp_path_factory.mktemp("hierarchy")
    root_config = tmp / "root.toml"
    root_config.write_text('[hierarchy]\noffline_after = "PT10M"\n')
    root = RegistryProcess(tmp / "root", ["--config", str(root_config), *SECURE_LOCAL])
    edge = RegistryProcess(tmp / "edge01", SECURE_LOCAL)
    servers = [root, edge]
    try:
        ok("cloud", "init", "--login-server", root.host, "--data-dir", str(root.data_dir))
        root.start()
        tree = Tree(root, root_config, edge, tmp / "shelf01", "", tmp, servers)
        tree.cloud("create", "edge01", "--repository", "demo/*", "base")
        activated = activate(
            edge.data_dir, tree.get_settings("edge01"), "--login-server", edge.host
        )
        assert activated.returncode == 0, activated.stderr
        edge.start()
        # Created after edge01 activated: edge01's cached settings do not know it yet.
        tree.cloud(
            "create",
            "shelf01",
            "--parent",
            "edge01",
            "--mode",
            "ReadOnly",
            "--repository",
            "demo/app*",
        )
        tree.shelf_connection = tree.get_settings("shelf01")
        assert parse(tree.shelf_connection).endpoint == edge.host
        activated = activate(tree.shelf_dir, tree.shelf_connection)
        assert activated.returncode == 0, activated.stderr
        yield tree
    finally:
        for server in servers:
            server.stop()


def report_then_see(tree: Tree, data_dir: Path, name: str, report: dict, state: str) -> None:
    """Report, then the root shows `state` for `name`."""
    device_call(data_dir, "report_status", report)
    seen = tree.show(name)["connectionState"]
    assert seen == state, f"{name} is {seen}, not {state}, right after reporting {report}"


def wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


# -- activation through a relaying parent --------------------------------------------------------


def test_root_shows_both_registries_active(tree: Tree) -> None:
    edge, shelf = tree.show("edge01"), tree.show("shelf01")
    assert edge["activationStatus"] == shelf["activationStatus"] == "Active"
    assert edge["loginServer"] == tree.edge.host
    assert shelf["parent"] == "edge01"
    below = tree.cloud("list", "--parent", "edge01")
    assert [cr["name"] for cr in below] == ["shelf01"]

    root_status = json.loads(
        ok("status", "--data-dir", str(tree.root.data_dir), "--output", "json")
    )
    assert root_status["role"] == "cloud"
    states = {cr["name"]: cr["activationStatus"] for cr in root_status["connectedRegistries"]}
    assert states == {"edge01": "Active", "shelf01": "Active"}
    for data_dir, name, mode, parent in (
        (tree.edge.data_dir, "edge01", "ReadWrite", tree.root.host),
        (tree.shelf_dir, "shelf01", "ReadOnly", tree.edge.host),
    ):
        status = json.loads(ok("status", "--data-dir", str(data_dir), "--output", "json"))
        assert (status["role"], status["name"], status["mode"]) == ("connected", name, mode)
        assert status["activationStatus"] == "Active"
        assert status["parent"]["endpoint"] == parent


def test_edge_learned_its_new_descendant(tree: Tree) -> None:
    store = Store(tree.edge.data_dir)
    try:
        settings = NodeState(store).settings() or {}
    finally:
        store.close()
    assert [d["name"] for d in settings["descendants"]] == ["shelf01"]


def test_second_instance_through_the_relay_is_refused(tree: Tree) -> None:
    result = activate(tree.tmp / "shelf01-again", tree.shelf_connection)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ALREADY_ACTIVATED: "), result.stderr
    assert not (tree.tmp / "shelf01-again").exists()


def test_relay_refuses_a_wrong_password(tree: Tree) -> None:
    store = Store(tree.shelf_dir)
    try:
        client = GatewayClient.for_node(store)
    finally:
        store.close()
    client = GatewayClient(client.base_url, "shelf01", "shelf01", "wrong-password")

    async def go() -> None:
        async with client:
            await client.settings()

    with pytest.raises(GatewayError) as refused:
        asyncio.run(go())
    assert (refused.value.code, refused.value.status) == ("UNAUTHORIZED", 401)


# -- connection state, as the root shows it -------------------------------------------------------


def test_connection_state_follows_contact(tree: Tree) -> None:
    edge = tree.edge.data_dir
    report_then_see(tree, edge, "edge01", {"state": "Online"}, "Online")
    # Its last contact as if it came longer ago than the limit: it stopped reporting since.
    with tree.root_at(datetime.now(UTC) - OFFLINE_AFTER - timedelta(seconds=1)) as then:
        then.touch("edge01")
    assert tree.show("edge01")["connectionState"] == "Offline"
    report_then_see(tree, edge, "edge01", {"state": "Online"}, "Online")


def test_status_details_make_it_unhealthy_and_syncing_shows(tree: Tree) -> None:
    detail = {
        "type": "sync",
        "code": "CONFLICT",
        "description": "tag moved on both sides",
        "timestamp": "2030-01-01T00:00:00+00:00",
        "correlationId": "c1",
    }
    # Through the relay: shelf01 reports to edge01, which forwards to the root.
    report_then_see(
        tree, tree.shelf_dir, "shelf01", {"state": "Online", "statusDetails": [detail]}, "Unhealthy"
    )
    report_then_see(tree, tree.shelf_dir, "shelf01", {"state": "Syncing"}, "Syncing")
    report_then_see(tree, tree.shelf_dir, "shelf01", {"state": "Online"}, "Online")


def test_a_relayed_call_is_contact_for_the_relaying_registry_too(tree: Tree) -> None:
    with tree.root_at(datetime.now(UTC) - timedelta(hours=1)) as then:
        then.touch("edge01")
    before = tree.show("edge01")["lastActivityTime"]
    device_call(tree.shelf_dir, "report_status", {"state": "Online"})
    assert tree.show("edge01")["lastActivityTime"] > before


# -- relaying while the root is down ---------------------------------------------------------------


def test_relay_while_the_root_is_down(tree: Tree) -> None:
    tree.cloud(
        "create", "shelf02", "--parent", "edge01", "--mode", "ReadOnly", "--repository", "demo/app*"
    )
    shelf02 = parse(tree.get_settings("shelf02"))
    shelf02_client = GatewayClient(
        f"http://{tree.edge.host}", "shelf02", shelf02.token_name, shelf02.password
    )

    async def shelf02_call(call: str, *args: Any) -> Any:
        async with shelf02_client:
            return await getattr(shelf02_client, call)(*args)

    # While the root is up: relayed, and edge01 refreshes its settings to know shelf02.
    assert asyncio.run(shelf02_call("settings")).body["name"] == "shelf02"
    online = device_call(tree.shelf_dir, "settings")
    assert online.etag

    tree.root.stop()
    try:
        cached = device_call(tree.shelf_dir, "settings")
        assert cached.body["name"] == "shelf01"
        assert cached.etag == online.etag
        assert device_call(tree.shelf_dir, "settings", cached.etag) is None  # 304 from cache

        marker = "2031-02-03T04:05:06+00:00"
        device_call(tree.shelf_dir, "report_status", {"state": "Online", "lastSyncTime": marker})
        queued = node_state(tree.edge.data_dir)
        assert json.loads(queued["queued_status/shelf01"])["lastSyncTime"] == marker

        with pytest.raises(GatewayError) as refused:
            asyncio.run(shelf02_call("activate", "a" * 32, "0", "127.0.0.1:1", "shelf02"))
        assert (refused.value.code, refused.value.status) == ("PARENT_UNREACHABLE", 503)
    finally:
        tree.root.start()

    assert tree.show("shelf01")["lastSyncTime"] != marker
    # The next relayed call reaches the root; the queue follows it.
    device_call(tree.shelf_dir, "settings")
    wait_for(
        lambda: tree.show("shelf01")["lastSyncTime"] == marker, "the queued status reached the root"
    )
    assert "queued_status/shelf01" not in node_state(tree.edge.data_dir)
    assert tree.show("shelf02")["activationStatus"] == "Inactive"


def test_activate_and_deactivate_through_the_relay(tree: Tree) -> None:
    device = tree.tmp / "shelf03"
    tree.cloud(
        "create", "shelf03", "--parent", "edge01", "--mode", "ReadOnly", "--repository", "demo/app*"
    )
    activated = activate(device, tree.get_settings("shelf03"))
    assert activated.returncode == 0, activated.stderr
    assert tree.show("shelf03")["activationStatus"] == "Active"
    ok("deactivate", "--data-dir", str(device), "--yes")
    assert tree.show("shelf03")["activationStatus"] == "Inactive"
