"""`connected-registry cloud …` as an operator on a root uses it: the real command in a child
process on a data directory, and for what devices and remote operators see, a real server on
the same directory.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support.cli import clean_env

from appliance.auth.certificates import ca_fingerprint
from appliance.control.connection_string import parse
from appliance.control.management_client import PASSWORD_PLACEHOLDER
from appliance.storage.layout import Layout
from appliance.storage.store import Store

if TYPE_CHECKING:
    from support.server import RegistryProcess

    StartRegistry = Callable[..., RegistryProcess]

GATEWAY_ACTIONS = ["config/read", "config/write", "message/read", "message/write"]
ALL_ACTIONS = ["content/delete", "content/read", "content/write", "metadata/read", "metadata/write"]


class Node:
    """The `connected-registry` command pointed at one data directory and its config."""

    def __init__(self, data_dir: Path, config: Path | None = None) -> None:
        self.data_dir = data_dir
        self.config = config

    def run(self, *args: str, local: bool = True) -> subprocess.CompletedProcess[str]:
        where = ["--data-dir", str(self.data_dir)] if local else []
        if local and self.config is not None:
            where += ["--config", str(self.config)]
        return subprocess.run(
            [sys.executable, "-m", "appliance", *args, *where],
            cwd=self.data_dir.parent, env=clean_env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60,
        )

    def ok(self, *args: str, local: bool = True) -> str:
        result = self.run(*args, local=local)
        assert result.returncode == 0, f"`{' '.join(args)}` exited {result.returncode}: " + (
            result.stderr
        )
        return result.stdout

    def json(self, *args: str, local: bool = True) -> Any:
        return json.loads(self.ok(*args, "--output", "json", local=local))

    def refused(self, *args: str, exit_code: int = 1, local: bool = True) -> str:
        """The one line on stderr of a command that must fail with `exit_code`."""
        result = self.run(*args, local=local)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == exit_code, (
            f"`{' '.join(args)}` exited {result.returncode}, stderr {result.stderr!r}"
        )
        assert len(lines) == 1, f"expected one line on stderr, got {result.stderr!r}"
        assert lines[0].startswith("Error: "), lines[0]
        return lines[0]

    def init(self, login_server: str = "127.0.0.1:5999") -> str:
        """`cloud init`; the admin token's password1."""
        made = self.json("cloud", "init", "--login-server", login_server)
        return made["adminToken"]["passwords"][0]["value"]

    def gateways(self, scope_map: str) -> dict[str, list[str]]:
        shown = self.json("scope-map", "show", scope_map)
        return {g["gateway"]: g["actions"] for g in shown["gateways"]}

    def repositories(self, scope_map: str) -> dict[str, list[str]]:
        shown = self.json("scope-map", "show", scope_map)
        return {p["repository"]: p["actions"] for p in shown["repositories"]}


def make_root(folder: Path) -> Node:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.toml"
    config.write_text("[limits]\nclient_tokens = 2\n")
    node = Node(folder / "data", config)
    node.init()
    return node


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Node:
    """A root with edge01 (ReadWrite: demo/*, base) and shelf01 (ReadOnly under it: demo/app*),
    for tests that only read or get refused."""
    node = make_root(tmp_path_factory.mktemp("root"))
    node.ok("cloud", "create", "edge01", "--repository", "demo/*", "base")
    node.ok(
        "cloud", "create", "shelf01", "--parent", "edge01", "--mode", "ReadOnly",
        "--repository", "demo/app*",
    )
    return node


@pytest.fixture
def fresh_root(tmp_path: Path) -> Node:
    return make_root(tmp_path / "root")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def gateway_settings_status(server: RegistryProcess, name: str, user: str, password: str) -> int:
    request = urllib.request.Request(
        f"{server.url}/gateway/v1/registries/{name}/settings", headers=basic(user, password)
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


# --- init ---------------------------------------------------------------------------------------


def test_init_makes_a_root_and_prints_the_admin_passwords_once(tmp_path: Path) -> None:
    node = Node(tmp_path / "data")
    made = node.json("cloud", "init", "--login-server", "registry.example.com:443")
    assert made["role"] == "cloud"
    assert made["loginServer"] == "registry.example.com:443"
    assert made["adminToken"]["name"] == "cloudadmin"
    assert [p["name"] for p in made["adminToken"]["passwords"]] == ["password1", "password2"]
    admin = node.json("scope-map", "show", "cloudadmin")
    assert admin["repositories"] == [{"repository": "**", "actions": ALL_ACTIONS}]
    assert node.json("token", "show", "cloudadmin")["scopeMap"] == "cloudadmin"

    again = node.json("cloud", "init")
    assert again["initialized"] is False
    assert again["adminToken"]["passwords"] == []
    assert "already a root" in node.ok("cloud", "init")
    line = node.refused("cloud", "init", "--login-server", "other.example.com:443")
    assert "already a root" in line and "nothing changed" in line
    assert node.json("cloud", "init")["loginServer"] == "registry.example.com:443"


def test_init_is_refused_on_a_connected_registry_and_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    store.node.role = "connected"
    store.node.name = "edge01"
    store.close()
    node = Node(tmp_path / "data")
    line = node.refused("cloud", "init")
    assert "connected registry" in line and "edge01" in line
    assert "not found" in node.refused("token", "show", "cloudadmin")


def test_init_refuses_a_login_server_that_is_not_host_port(tmp_path: Path) -> None:
    node = Node(tmp_path / "data")
    assert "HOST:PORT" in node.refused("cloud", "init", "--login-server", "nohost", exit_code=2)


def test_the_verbs_refuse_a_node_that_is_not_a_root(tmp_path: Path) -> None:
    node = Node(tmp_path / "data")
    assert "cloud init" in node.refused("cloud", "list")
    assert "cloud init" in node.refused("cloud", "create", "edge01", "--repository", "a")


# --- create: the rules ----------------------------------------------------------------------------


def test_create_defaults_to_readwrite_continuous_with_acr_defaults(root: Node) -> None:
    shown = root.json("cloud", "show", "edge01")
    assert shown["mode"] == "ReadWrite"
    assert shown["parent"] is None
    assert shown["repositories"] == ["demo/*", "base"]
    assert shown["syncSchedule"] == "* * * * *"
    assert shown["syncWindow"] is None
    assert shown["messageTtl"] == "P2D"
    assert shown["logLevel"] == "Information"
    assert shown["activationStatus"] == "Inactive"
    assert shown["connectionState"] == "Offline"
    assert shown["syncToken"] == "edge01"


@pytest.mark.parametrize("name", ["edge", "1edge", "edge-01", "edge_01", "e" * 51])
def test_create_refuses_a_bad_name(root: Node, name: str) -> None:
    line = root.refused("cloud", "create", name, "--repository", "demo/a")
    assert line.startswith("Error: INVALID: ") and "5-50 letters and digits" in line


def test_create_refuses_a_name_already_in_the_hierarchy_in_any_case(root: Node) -> None:
    line = root.refused("cloud", "create", "EDGE01", "--repository", "demo/a")
    assert "already exists" in line


def test_a_readonly_parent_only_has_readonly_children(root: Node) -> None:
    line = root.refused(
        "cloud", "create", "shelf02", "--parent", "shelf01", "--repository", "demo/app1"
    )
    assert "ReadOnly parent only has ReadOnly children" in line
    made = root.json(
        "cloud", "create", "shelf03", "--parent", "shelf01", "--mode", "readonly",
        "--repository", "demo/app1",
    )
    assert (made["mode"], made["parent"]) == ("ReadOnly", "shelf01")


@pytest.mark.parametrize("repository", ["demo/app/x", "other", "demo/**", "demo/*"])
def test_a_childs_repositories_are_within_its_parents(root: Node, repository: str) -> None:
    line = root.refused(
        "cloud", "create", "shelf04", "--parent", "shelf01", "--mode", "ReadOnly",
        "--repository", repository,
    )
    assert f"repository {repository!r} is not among the repositories of parent" in line


def test_a_narrower_pattern_is_within_its_parents_pattern(root: Node) -> None:
    made = root.json(
        "cloud", "create", "edge05", "--parent", "edge01",
        "--repository", "demo/app*", "demo/web", "--repository", "base",
    )
    assert made["repositories"] == ["demo/app*", "demo/web", "base"]


def test_create_refuses_an_unknown_parent(root: Node) -> None:
    line = root.refused("cloud", "create", "edge06", "--parent", "nosuch1", "--repository", "a")
    assert line.startswith("Error: NAME_UNKNOWN: ") and "'nosuch1' not found" in line


def test_create_needs_a_repository(root: Node) -> None:
    assert "--repository" in root.refused("cloud", "create", "edge07", exit_code=2)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sync-schedule", "0 2 * * *"], "needs a --sync-window"),
        (["--sync-schedule", "0 2 * * *", "--sync-window", "PT30M"], "from PT1H to P7D"),
        (["--sync-schedule", "0 2 * * *", "--sync-window", "P8D"], "from PT1H to P7D"),
        (["--sync-schedule", "every night", "--sync-window", "PT4H"], "5-field cron"),
        (["--sync-message-ttl", "PT12H"], "from P1D to P90D"),
        (["--sync-message-ttl", "P91D"], "from P1D to P90D"),
        (["--sync-message-ttl", "two days"], "not an ISO 8601 duration"),
    ],
)
def test_create_refuses_a_schedule_window_or_ttl_out_of_bounds(
    root: Node, flags: list[str], message: str
) -> None:
    assert message in root.refused("cloud", "create", "edge08", "--repository", "a", *flags)


def test_a_schedule_with_a_window_and_bounds_is_taken(root: Node) -> None:
    made = root.json(
        "cloud", "create", "edge09", "--repository", "a", "--sync-schedule", "0 2 * * *",
        "--sync-window", "P7D", "--sync-message-ttl", "P90D", "--log-level", "Debug",
    )
    assert (made["syncSchedule"], made["syncWindow"]) == ("0 2 * * *", "P7D")
    assert (made["messageTtl"], made["logLevel"]) == ("P90D", "Debug")


def test_client_tokens_are_known_tokens_within_the_limit(fresh_root: Node) -> None:
    node = fresh_root
    node.ok("scope-map", "create", "pullers", "--repository", "a", "content/read")
    for token in ("client1", "client2", "client3"):
        node.ok("token", "create", token, "--scope-map", "pullers", "--no-passwords")
    line = node.refused(
        "cloud", "create", "edge01", "--repository", "a",
        "--client-tokens", "client1", "client2", "--client-tokens", "client3",
    )
    assert "at most 2 client tokens" in line
    assert "'nosuch1' not found" in node.refused(
        "cloud", "create", "edge01", "--repository", "a", "--client-tokens", "nosuch1"
    )
    made = node.json(
        "cloud", "create", "edge01", "--repository", "a", "--client-tokens", "client1", "client2"
    )
    assert made["clientTokens"] == ["client1", "client2"]
    assert "admin token, not a client token" in node.refused(
        "cloud", "update", "edge01", "--add-client-tokens", "cloudadmin"
    )
    assert "is a sync token" in node.refused(
        "cloud", "create", "edge02", "--repository", "a", "--client-tokens", "edge01"
    )
    assert "at most 2 client tokens" in node.refused(
        "cloud", "update", "edge01", "--add-client-tokens", "client3"
    )
    assert "both added and removed" in node.refused(
        "cloud", "update", "edge01", "--add-client-tokens", "client3",
        "--remove-client-tokens", "client3",
    )
    updated = node.json(
        "cloud", "update", "edge01", "--remove-client-tokens", "client1",
        "--add-client-tokens", "client3",
    )
    assert updated["clientTokens"] == ["client2", "client3"]
    listed = node.json("cloud", "list-client-tokens", "edge01")
    assert [(t["name"], t["scopeMap"]) for t in listed] == [
        ("client2", "pullers"), ("client3", "pullers"),
    ]


# --- update -----------------------------------------------------------------------------------


def test_mode_and_parent_cannot_be_changed(root: Node) -> None:
    assert "--mode" in root.refused("cloud", "update", "edge01", "--mode", "ReadOnly", exit_code=2)
    assert "--parent" in root.refused(
        "cloud", "update", "shelf01", "--parent", "edge09", exit_code=2
    )
    assert root.refused("cloud", "update", "edge01", exit_code=2).endswith("--tag-semver")


def test_update_changes_the_schedule_and_continuous_drops_the_window(fresh_root: Node) -> None:
    node = fresh_root
    node.ok("cloud", "create", "edge01", "--repository", "a")
    assert "needs a --sync-window" in node.refused(
        "cloud", "update", "edge01", "--sync-schedule", "0 3 * * *"
    )
    updated = node.json(
        "cloud", "update", "edge01", "--sync-schedule", "0 3 * * *", "--sync-window", "PT2H",
        "--sync-message-ttl", "P3D", "--log-level", "warning",
    )
    assert (updated["syncSchedule"], updated["syncWindow"]) == ("0 3 * * *", "PT2H")
    assert (updated["messageTtl"], updated["logLevel"]) == ("P3D", "Warning")
    back = node.json("cloud", "update", "edge01", "--sync-schedule", "* * * * *")
    assert (back["syncSchedule"], back["syncWindow"]) == ("* * * * *", None)
    assert "NAME_UNKNOWN" in node.refused("cloud", "update", "nosuch1", "--log-level", "Debug")


def test_tag_filters_are_set_at_create_and_changed_or_removed_by_update(fresh_root: Node) -> None:
    node = fresh_root
    made = node.json(
        "cloud", "create", "edge01", "--repository", "a", "--tag-include", "^v?[0-9]",
        "--tag-exclude", "-rc", "--tag-semver", ">=1.2 <2",
    )
    assert (made["tagInclude"], made["tagExclude"], made["tagSemver"]) == (
        "^v?[0-9]", "-rc", ">=1.2 <2"
    )
    assert "Tag filters:       include ^v?[0-9]; exclude -rc; semver >=1.2 <2" in node.ok(
        "cloud", "show", "edge01"
    )
    updated = node.json("cloud", "update", "edge01", "--tag-semver", ">=2 || =1.9.0",
                        "--tag-include", "")
    assert (updated["tagInclude"], updated["tagExclude"], updated["tagSemver"]) == (
        None, "-rc", ">=2 || =1.9.0"
    )
    assert "Tag filters:       exclude -rc; semver >=2 || =1.9.0" in node.ok(
        "cloud", "show", "edge01"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tag-include", "v(1"], "tag include 'v(1' is not a regular expression"),
        (["--tag-exclude", "[rc"], "tag exclude '[rc' is not a regular expression"),
        (["--tag-semver", ">=1.x"], "tag semver: '1.x' in semver range '>=1.x' is not a version"),
        (["--tag-semver", "~1.2"], "tag semver: '~1.2' in semver range '~1.2' is not a version"),
        (["--tag-semver", ">=1 ||"], "has an empty side of '||'"),
    ],
)
def test_a_bad_tag_filter_is_refused_and_changes_nothing(
    fresh_root: Node, flags: list[str], message: str
) -> None:
    node = fresh_root
    assert message in node.refused("cloud", "create", "edge01", "--repository", "a", *flags)
    assert node.json("cloud", "list") == []
    node.ok("cloud", "create", "edge01", "--repository", "a", "--tag-semver", ">=1")
    assert message in node.refused("cloud", "update", "edge01", *flags)
    kept = node.json("cloud", "show", "edge01")
    assert (kept["tagInclude"], kept["tagExclude"], kept["tagSemver"]) == (None, None, ">=1")


# --- list, show -------------------------------------------------------------------------------


def test_list_all_below_a_parent_or_only_the_children(fresh_root: Node) -> None:
    node = fresh_root
    node.ok("cloud", "create", "edge01", "--repository", "demo/**")
    node.ok("cloud", "create", "edge02", "--repository", "other")
    node.ok("cloud", "create", "floor01", "--parent", "edge01", "--repository", "demo/x/**")
    node.ok("cloud", "create", "shelf01", "--parent", "floor01", "--repository", "demo/x/y")

    def names(*flags: str) -> list[str]:
        return sorted(cr["name"] for cr in node.json("cloud", "list", *flags))

    assert names() == ["edge01", "edge02", "floor01", "shelf01"]
    assert names("--no-children") == ["edge01", "edge02"]
    assert names("--parent", "edge01") == ["floor01", "shelf01"]
    assert names("--parent", "edge01", "--no-children") == ["floor01"]
    assert names("--parent", "shelf01") == []
    assert "NAME_UNKNOWN" in node.refused("cloud", "list", "--parent", "nosuch1")

    table = node.ok("cloud", "list").splitlines()
    assert table[0].split("  ")[0] == "NAME"
    for column in ("MODE", "CONNECTION STATE", "PARENT", "LOGIN SERVER", "LAST SYNC (UTC)",
                   "SYNC SCHEDULE", "SYNC WINDOW"):
        assert column in table[0]
    assert table[3].split()[:4] == ["floor01", "ReadWrite", "Offline", "edge01"]


def test_show_an_unknown_registry_names_the_code(root: Node) -> None:
    line = root.refused("cloud", "show", "nosuch1")
    assert line == "Error: NAME_UNKNOWN: connected registry 'nosuch1' not found"


# --- sync tokens, permissions, delete ---------------------------------------------------------


def test_ancestors_sync_scope_maps_hold_their_descendants_gateway_actions(fresh_root: Node) -> None:
    node = fresh_root
    node.ok("cloud", "create", "edge01", "--repository", "demo/**")
    node.ok(
        "cloud", "create", "floor01", "--parent", "edge01", "--mode", "ReadOnly",
        "--repository", "demo/x/*",
    )
    node.ok(
        "cloud", "create", "shelf01", "--parent", "floor01", "--mode", "ReadOnly",
        "--repository", "demo/x/app*",
    )
    assert node.gateways("shelf01") == {"shelf01": GATEWAY_ACTIONS}
    assert node.gateways("floor01") == {"floor01": GATEWAY_ACTIONS, "shelf01": GATEWAY_ACTIONS}
    assert node.gateways("edge01") == {
        "edge01": GATEWAY_ACTIONS, "floor01": GATEWAY_ACTIONS, "shelf01": GATEWAY_ACTIONS,
    }
    assert node.repositories("edge01") == {
        "demo/**": ALL_ACTIONS,
        "demo/x/*": ["content/read", "metadata/read"],
        "demo/x/app*": ["content/read", "metadata/read"],
    }
    assert node.repositories("shelf01") == {"demo/x/app*": ["content/read", "metadata/read"]}
    assert node.json("token", "show", "shelf01")["scopeMap"] == "shelf01"
    assert node.json("cloud", "permissions", "show", "floor01")["name"] == "floor01"


def test_permissions_update_adds_up_the_chain_and_removes_down_it(fresh_root: Node) -> None:
    node = fresh_root
    node.ok("cloud", "create", "edge01", "--repository", "demo/**", "base")
    node.ok("cloud", "create", "floor01", "--parent", "edge01", "--repository", "demo/a")
    node.ok("cloud", "create", "shelf01", "--parent", "floor01", "--repository", "demo/a")
    assert "not among the repositories of parent 'edge01'" in node.refused(
        "cloud", "permissions", "update", "floor01", "--add", "other"
    )
    shown = node.json("cloud", "permissions", "update", "floor01", "--add", "demo/b", "base")
    assert set(p["repository"] for p in shown["repositories"]) >= {"demo/a", "demo/b", "base"}
    assert "demo/b" in node.repositories("edge01")
    assert node.json("cloud", "show", "floor01")["repositories"] == ["demo/a", "demo/b", "base"]

    node.ok("cloud", "permissions", "update", "floor01", "--remove", "base")
    assert node.json("cloud", "show", "floor01")["repositories"] == ["demo/a", "demo/b"]
    assert "both added and removed" in node.refused(
        "cloud", "permissions", "update", "floor01", "--add", "demo/c", "--remove", "demo/c"
    )
    assert "nothing to change" in node.refused(
        "cloud", "permissions", "update", "floor01", exit_code=2
    )


def test_delete_is_refused_while_children_remain(root: Node) -> None:
    line = root.refused("cloud", "delete", "edge01", "--yes")
    assert "has connected registries below it" in line and "shelf01" in line
    assert root.json("cloud", "show", "edge01")["name"] == "edge01"


def test_delete_asks_for_confirmation(root: Node) -> None:
    assert "--yes" in root.refused("cloud", "delete", "shelf01")
    assert root.json("cloud", "show", "shelf01")["name"] == "shelf01"


def test_delete_without_cleanup_keeps_the_sync_token_and_prints_the_commands(
    fresh_root: Node,
) -> None:
    node = fresh_root
    node.ok("cloud", "create", "edge01", "--repository", "demo/*")
    out = node.ok("cloud", "delete", "edge01", "--yes")
    assert "connected-registry token delete edge01 --yes" in out
    assert "connected-registry scope-map delete edge01 --yes" in out
    assert node.json("token", "show", "edge01")["name"] == "edge01"
    assert "NAME_UNKNOWN" in node.refused("cloud", "show", "edge01")
    node.ok("token", "delete", "edge01", "--yes")
    node.ok("scope-map", "delete", "edge01", "--yes")


def test_recreating_a_name_deleted_without_cleanup_says_how_to_remove_what_is_left(
    fresh_root: Node,
) -> None:
    node = fresh_root
    node.ok("cloud", "create", "edge01", "--repository", "demo/*")
    node.ok("cloud", "delete", "edge01", "--yes")
    assert node.refused("cloud", "create", "edge01", "--repository", "demo/*") == (
        "Error: INVALID: cannot create the sync token 'edge01': token 'edge01' and scope map "
        "'edge01' already exist (a connected registry deleted without --cleanup keeps them); "
        "remove them on the root with `connected-registry token delete edge01 --yes` then "
        "`connected-registry scope-map delete edge01 --yes`, or choose another name"
    )
    node.ok("token", "delete", "edge01", "--yes")
    assert "remove it on the root with `connected-registry scope-map delete edge01 --yes`," in (
        node.refused("cloud", "create", "edge01", "--repository", "demo/*")
    )
    node.ok("scope-map", "delete", "edge01", "--yes")
    assert node.json("cloud", "create", "edge01", "--repository", "demo/*")["name"] == "edge01"


def test_delete_with_cleanup_removes_the_sync_token_and_the_ancestors_gateway_actions(
    fresh_root: Node,
) -> None:
    node = fresh_root
    node.ok("cloud", "create", "edge01", "--repository", "demo/**")
    node.ok("cloud", "create", "floor01", "--parent", "edge01", "--repository", "demo/x/**")
    node.ok("cloud", "create", "shelf01", "--parent", "floor01", "--repository", "demo/x/y")
    # A sync token cannot be deleted by hand while its connected registry exists.
    refusal = node.refused("token", "delete", "shelf01", "--yes")
    assert "delete the connected registry first" in refusal
    deleted = node.json("cloud", "delete", "shelf01", "--cleanup", "--yes")
    assert deleted["commands"] == []
    assert "not found" in node.refused("token", "show", "shelf01")
    assert "not found" in node.refused("scope-map", "show", "shelf01")
    assert "shelf01" not in node.gateways("floor01")
    assert "shelf01" not in node.gateways("edge01")
    assert set(node.gateways("edge01")) == {"edge01", "floor01"}


# --- get-settings, deactivate, resync (locally) -----------------------------------------------


def test_get_settings_without_a_password_prints_acrs_placeholder(root: Node) -> None:
    settings = root.json("cloud", "get-settings", "edge01", "--parent-protocol", "http")
    assert settings["syncTokenPassword"] is None
    assert f"SyncTokenPassword={PASSWORD_PLACEHOLDER};" in settings["connectionString"]
    assert settings["connectionString"].startswith(
        "ConnectedRegistryName=edge01;SyncTokenName=edge01;"
    )


def test_get_settings_with_a_password_parses_as_a_connection_string(root: Node) -> None:
    assert "--yes" in root.refused(
        "cloud", "get-settings", "edge01", "--parent-protocol", "http", "--generate-password", "1"
    )
    settings = root.json(
        "cloud", "get-settings", "edge01", "--parent-protocol", "http",
        "--generate-password", "2", "--yes",
    )
    parsed = parse(settings["connectionString"])
    assert (parsed.registry_name, parsed.token_name) == ("edge01", "edge01")
    assert parsed.password == settings["syncTokenPassword"]
    assert (parsed.endpoint, parsed.protocol) == ("127.0.0.1:5999", "http")
    assert parsed.fingerprint is None
    assert settings["syncTokenPasswordName"] == "password2"
    token = root.json("token", "show", "edge01")
    assert [p["name"] for p in token["credentials"]["passwords"]] == ["password2"]


def test_get_settings_of_a_child_needs_its_parent_activated(root: Node) -> None:
    line = root.refused("cloud", "get-settings", "shelf01", "--parent-protocol", "https")
    assert line.startswith("Error: PARENT_NOT_ACTIVATED: ") and "activate the parent" in line


def test_get_settings_refuses_bad_protocol_flags(root: Node) -> None:
    assert "--parent-protocol" in root.refused("cloud", "get-settings", "edge01", exit_code=2)
    assert "ftp" in root.refused(
        "cloud", "get-settings", "edge01", "--parent-protocol", "ftp", exit_code=2
    )
    assert "'3'" in root.refused(
        "cloud", "get-settings", "edge01", "--parent-protocol", "https",
        "--generate-password", "3", exit_code=2,
    )


def test_get_settings_pins_the_roots_ca_and_refuses_http_off_loopback(tmp_path: Path) -> None:
    node = Node(tmp_path / "data")
    node.init("registry.example.com:443")
    node.ok("cloud", "create", "edge01", "--repository", "a")
    line = node.refused("cloud", "get-settings", "edge01", "--parent-protocol", "http")
    assert "only allowed for a loopback parent" in line
    before = node.json("cloud", "get-settings", "edge01", "--parent-protocol", "https")
    assert before["parentCertificateFingerprint"] is None
    assert "ParentCertificateFingerprint" not in before["connectionString"]

    node.ok("tls", "generate", "--host", "registry.example.com")
    settings = node.json(
        "cloud", "get-settings", "edge01", "--parent-protocol", "https",
        "--generate-password", "1", "--yes",
    )
    parsed = parse(settings["connectionString"])
    assert parsed.fingerprint == ca_fingerprint(Layout(tmp_path / "data"))
    assert (parsed.host, parsed.port, parsed.protocol) == ("registry.example.com", 443, "https")


def test_deactivate_and_resync_locally(root: Node) -> None:
    assert "--yes" in root.refused("cloud", "deactivate", "edge01")
    assert root.json("cloud", "deactivate", "edge01", "--yes")["activationStatus"] == "Inactive"
    assert root.json("cloud", "resync", "edge01")["resyncRequested"] is True
    assert "NAME_UNKNOWN" in root.refused("cloud", "resync", "nosuch1")


# --- with a server: what devices and remote operators get -------------------------------------


@pytest.fixture
def served_root(tmp_path: Path, start_registry: StartRegistry) -> tuple[Node, RegistryProcess, str]:
    """A root served with auth on plain loopback HTTP; its admin password."""
    server = start_registry(data_dir=tmp_path / "data", args=["--auth", "--insecure-http"])
    node = Node(tmp_path / "data")
    password = node.init(server.host)
    return node, server, password


def test_the_generated_password_authenticates_the_sync_token_at_the_gateway(
    served_root: tuple[Node, RegistryProcess, str],
) -> None:
    node, server, _ = served_root
    node.ok("cloud", "create", "edge01", "--repository", "a")
    settings = node.json(
        "cloud", "get-settings", "edge01", "--parent-protocol", "http",
        "--generate-password", "1", "--yes",
    )
    parsed = parse(settings["connectionString"])
    assert parsed.base_url == server.url
    assert gateway_settings_status(server, "edge01", parsed.token_name, parsed.password) == 200
    assert gateway_settings_status(server, "edge01", "edge01", "wrong-password-000") == 401

    # Rotating password1 again retires the string just printed.
    node.ok(
        "cloud", "get-settings", "edge01", "--parent-protocol", "http",
        "--generate-password", "1", "--yes",
    )
    assert gateway_settings_status(server, "edge01", parsed.token_name, parsed.password) == 401


def test_the_remote_path_sets_and_removes_tag_filters(
    served_root: tuple[Node, RegistryProcess, str], tmp_path: Path
) -> None:
    _, server, password = served_root
    elsewhere = Node(tmp_path / "elsewhere")
    elsewhere.data_dir.mkdir()
    remote = ["--registry", server.url, "--username", "cloudadmin", "--password", password]
    made = elsewhere.json(
        "cloud", "create", "edge01", "--repository", "a", "--tag-semver", ">=1.2 <2", *remote,
        local=False,
    )
    assert made["tagSemver"] == ">=1.2 <2"
    updated = elsewhere.json(
        "cloud", "update", "edge01", "--tag-semver", "", "--tag-exclude", "-rc", *remote,
        local=False,
    )
    assert (updated["tagExclude"], updated["tagSemver"]) == ("-rc", None)


def test_the_remote_path_creates_lists_shows_and_gets_settings(
    served_root: tuple[Node, RegistryProcess, str], tmp_path: Path
) -> None:
    node, server, password = served_root
    # Run from a directory that is no node at all: only --registry leads to the root.
    elsewhere = Node(tmp_path / "elsewhere")
    elsewhere.data_dir.mkdir()
    remote = ["--registry", server.url, "--username", "cloudadmin", "--password", password]
    made = elsewhere.json(
        "cloud", "create", "edge01", "--repository", "demo/*", "--mode", "ReadOnly", *remote,
        local=False,
    )
    assert (made["name"], made["mode"]) == ("edge01", "ReadOnly")
    assert [cr["name"] for cr in elsewhere.json("cloud", "list", *remote, local=False)] == [
        "edge01"
    ]
    assert elsewhere.json("cloud", "show", "edge01", *remote, local=False)["repositories"] == [
        "demo/*"
    ]
    assert node.json("cloud", "show", "edge01")["mode"] == "ReadOnly"
    line = elsewhere.refused(
        "cloud", "create", "edge02", "--parent", "edge01", "--repository", "demo/a", *remote,
        local=False,
    )
    assert "ReadOnly parent only has ReadOnly children" in line

    settings = elsewhere.json(
        "cloud", "get-settings", "edge01", "--parent-protocol", "http",
        "--generate-password", "1", "--yes", *remote, local=False,
    )
    parsed = parse(settings["connectionString"])
    assert gateway_settings_status(server, "edge01", parsed.token_name, parsed.password) == 200

    wrong = ["--registry", server.url, "--password", "not-the-password"]
    line = elsewhere.refused("cloud", "list", *wrong, local=False)
    assert line.startswith("Error: UNAUTHORIZED: ")
    assert "--password" in elsewhere.refused(
        "cloud", "list", "--registry", server.url, exit_code=2, local=False
    )
    assert "loopback" in elsewhere.refused(
        "cloud", "list", "--registry", "http://registry.example.com", "--password", "x",
        exit_code=2, local=False,
    )


def test_the_remote_path_trusts_a_self_signed_root_with_its_ca_file(
    tmp_path: Path, start_registry: StartRegistry
) -> None:
    data = tmp_path / "data"
    node = Node(data)
    node.ok("tls", "generate", "--host", "127.0.0.1")
    layout = Layout(data)
    server = start_registry(
        data_dir=data,
        args=["--auth", "--tls-cert", str(layout.tls_server_cert),
              "--tls-key", str(layout.tls_server_key)],
    )
    password = node.init(server.host)
    url = f"https://{server.host}"
    remote = ["--registry", url, "--password", password]
    assert node.json(
        "cloud", "list", *remote, "--ca-file", str(layout.tls_ca_cert), local=False
    ) == []
    line = node.refused("cloud", "list", *remote, local=False)
    assert line.startswith(f"Error: UNTRUSTED_ROOT: the certificate of the root at {url} is not")
    assert line.endswith("give --ca-file with the root's CA certificate"), line
    settings = node.json("cloud", "create", "edge01", "--repository", "a")
    assert settings["name"] == "edge01"
    pinned = node.json(
        "cloud", "get-settings", "edge01", "--parent-protocol", "https", *remote,
        "--ca-file", str(layout.tls_ca_cert), local=False,
    )
    assert pinned["parentCertificateFingerprint"] == ca_fingerprint(layout)
