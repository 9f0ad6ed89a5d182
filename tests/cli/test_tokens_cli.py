
"""`connected-registry token …` and `scope-map …` as an operator uses them: the real command in a
child process on a data directory, and a real server on the same directory proving that what
the commands did is what clients get, at once.
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

import pexpect
import pytest
from support.cli import clean_env

if TYPE_CHECKING:
    from support.server import RegistryProcess

    StartRegistry = Callable[..., RegistryProcess]

PULL = ("content/read", "metadata/read")
AUTH_ARGS = ["--auth", "--insecure-http"]


class Node:
    """The `connected-registry` command pointed at one data directory (and maybe a config)."""

    def __init__(self, data_dir: Path, config: Path | None = None) -> None:
        self.data_dir = data_dir
        self.config = config

    def args(self, *args: str) -> list[str]:
        where = ["--data-dir", str(self.data_dir)]
        if self.config is not None:
            where += ["--config", str(self.config)]
        return [sys.executable, "-m", "appliance", *args, *where]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                self.args(*args), cwd=self.data_dir.parent, env=clean_env(),
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"`{' '.join(args)}` still running after 60s: {exc.stderr!r}")

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, (
            f"`{' '.join(args)}` exited {result.returncode}: {result.stderr!r}"
        )
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--output", "json"))

    def refused(self, *args: str, exit_code: int = 1) -> str:
        """The one line on stderr of a command that must fail with `exit_code`."""
        result = self.run(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == exit_code, (
            f"`{' '.join(args)}` exited {result.returncode}, stderr {result.stderr!r}"
        )
        assert len(lines) == 1, f"expected one line on stderr, got {result.stderr!r}"
        assert lines[0].startswith("Error: "), lines[0]
        return lines[0]

    def create_token(self, name: str, *args: str) -> dict[str, str]:
        """Create a token; its passwords by slot name."""
        created = self.json("token", "create", name, *args)
        return {p["name"]: p["value"] for p in created["passwords"]}


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "data")


@pytest.fixture(scope="module")
def node_with_a_token(tmp_path_factory: pytest.TempPathFactory) -> Node:
    """Scope map `team-base` and token `base-client`, for tests that only get refused."""
    node = Node(tmp_path_factory.mktemp("refusals") / "data")
    node.ok("scope-map", "create", "team-base", "--repository", "team/*", *PULL)
    node.create_token("base-client", "--scope-map", "team-base")
    return node


def tags_status(server: RegistryProcess, repository: str, user: str, password: str) -> int:
    """The status of GET /v2/<repository>/tags/list with these Basic credentials."""
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"{server.url}/v2/{repository}/tags/list", headers={"Authorization": f"Basic {basic}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def logs_in(server: RegistryProcess, user: str, password: str) -> bool:
    """Whether the server takes these credentials (a repository nobody pushed: 404 when it does).
    """
    status = tags_status(server, "team/app", user, password)
    assert status in (401, 404), f"unexpected status {status}"
    return status == 404


# --- scope maps -------------------------------------------------------------------------------


def test_scope_map_with_two_repository_groups_shows_back_as_json(node: Node) -> None:
    node.ok(
        "scope-map", "create", "team-pull",
        "--repository", "team/*", "content/read", "metadata/read",
        "--repository", "base/**", "content/read",
        "--description", "pull team images",
    )
    shown = node.json("scope-map", "show", "team-pull")
    assert shown["name"] == "team-pull"
    assert shown["description"] == "pull team images"
    assert shown["origin"] == "local"
    assert shown["repositories"] == [
        {"repository": "team/*", "actions": ["content/read", "metadata/read"]},
        {"repository": "base/**", "actions": ["content/read"]},
    ]
    assert [s["name"] for s in node.json("scope-map", "list")] == ["team-pull"]


def test_scope_map_table_lists_each_repository_with_its_actions(node: Node) -> None:
    table = node.ok(
        "scope-map", "create", "team-pull",
        "--repository", "team/*", "content/read", "metadata/read",
        "--repository", "base/alpine", "content/read",
    )
    assert "team/*       content/read metadata/read" in table
    assert "base/alpine  content/read" in table


def test_scope_map_update_adds_and_removes_actions(node: Node) -> None:
    node.ok("scope-map", "create", "team-push", "--repository", "team/app", *PULL)
    updated = node.json(
        "scope-map", "update", "team-push",
        "--add-repository", "team/app", "content/write",
        "--add-repository", "team/**", "content/delete",
        "--remove-repository", "team/app", "metadata/read",
        "--description", "push team/app",
    )
    assert updated["repositories"] == [
        {"repository": "team/app", "actions": ["content/read", "content/write"]},
        {"repository": "team/**", "actions": ["content/delete"]},
    ]
    assert updated["description"] == "push team/app"


def test_scope_map_in_use_cannot_be_deleted(node: Node) -> None:
    node.ok("scope-map", "create", "team-pull", "--repository", "team/*", *PULL)
    node.create_token("edge-client", "--scope-map", "team-pull")
    line = node.refused("scope-map", "delete", "team-pull", "--yes")
    assert "edge-client" in line
    node.ok("token", "delete", "edge-client", "--yes")
    node.ok("scope-map", "delete", "team-pull", "--yes")
    assert node.json("scope-map", "list") == []


# --- token create and show --------------------------------------------------------------------


def test_token_create_prints_two_different_strong_passwords_and_show_never_does(
    node: Node,
) -> None:
    node.ok("scope-map", "create", "team-pull", "--repository", "team/*", *PULL)
    created = node.json("token", "create", "edge-client", "--scope-map", "team-pull")
    assert created["name"] == "edge-client"
    assert created["scopeMap"] == "team-pull"
    assert [p["name"] for p in created["passwords"]] == ["password1", "password2"]
    one, two = (p["value"] for p in created["passwords"])
    assert one != two
    for password in (one, two):
        assert len(password) >= 32 and len(set(password)) >= 16, password

    for shown in (
        node.ok("token", "show", "edge-client"),
        node.ok("token", "show", "edge-client", "--output", "json"),
        node.ok("token", "list"),
        node.ok("token", "list", "--output", "json"),
    ):
        assert "edge-client" in shown
        assert one not in shown and two not in shown, "a password was shown again"
    shown_json = node.json("token", "show", "edge-client")
    assert shown_json["status"] == "enabled" and shown_json["origin"] == "local"
    assert [p["name"] for p in shown_json["credentials"]["passwords"]] == [
        "password1", "password2",
    ]


def test_token_create_table_names_both_passwords_and_says_they_are_shown_once(
    node: Node,
) -> None:
    node.ok("scope-map", "create", "team-pull", "--repository", "team/*", *PULL)
    text = node.ok("token", "create", "edge-client", "--scope-map", "team-pull")
    assert "password1" in text and "password2" in text
    assert "shown only once" in text
    assert "edge-client" in text and "team-pull" in text


def test_token_create_with_repository_makes_a_scope_map_named_after_it(node: Node) -> None:
    node.create_token(
        "ci-pusher",
        "--repository", "ci/**", "content/read", "content/write",
        "--repository", "base/alpine", "content/read",
    )
    assert node.json("token", "show", "ci-pusher")["scopeMap"] == "ci-pusher-scope-map"
    scope = node.json("scope-map", "show", "ci-pusher-scope-map")
    assert scope["repositories"] == [
        {"repository": "ci/**", "actions": ["content/read", "content/write"]},
        {"repository": "base/alpine", "actions": ["content/read"]},
    ]


def test_token_create_without_passwords_then_generate_one(node: Node) -> None:
    node.ok("scope-map", "create", "team-pull", "--repository", "team/*", *PULL)
    created = node.json("token", "create", "late-client", "--scope-map", "team-pull",
                        "--no-passwords")
    assert created["passwords"] == []
    generated = node.json("token", "credential", "generate", "late-client", "--password2",
                          "--expiration-in-days", "30")
    assert generated["name"] == "late-client"
    assert [p["name"] for p in generated["passwords"]] == ["password2"]
    slots = node.json("token", "show", "late-client")["credentials"]["passwords"]
    assert [p["name"] for p in slots] == ["password2"]
    assert slots[0]["expiry"] is not None


# --- what a running server makes of it --------------------------------------------------------


def test_created_token_logs_in_to_a_running_server_and_a_wrong_password_does_not(
    node: Node, start_registry: StartRegistry
) -> None:
    server = start_registry(data_dir=node.data_dir, args=AUTH_ARGS)
    passwords = node.create_token("edge-client", "--repository", "team/*", *PULL)
    assert logs_in(server, "edge-client", passwords["password1"])
    assert logs_in(server, "edge-client", passwords["password2"])
    assert not logs_in(server, "edge-client", passwords["password1"] + "x")
    assert not logs_in(server, "nobody-here", passwords["password1"])


def test_generating_password1_stops_the_old_one_at_once_and_password2_keeps_working(
    node: Node, start_registry: StartRegistry
) -> None:
    server = start_registry(data_dir=node.data_dir, args=AUTH_ARGS)
    old = node.create_token("edge-client", "--repository", "team/*", *PULL)
    assert logs_in(server, "edge-client", old["password1"])  # now cached by the server

    generated = node.json("token", "credential", "generate", "edge-client", "--password1")
    new = generated["passwords"][0]["value"]
    assert generated["passwords"][0]["name"] == "password1"
    assert new not in (old["password1"], old["password2"])

    assert not logs_in(server, "edge-client", old["password1"])
    assert logs_in(server, "edge-client", new)
    assert logs_in(server, "edge-client", old["password2"])


def test_deleting_password2_stops_it_at_once(node: Node, start_registry: StartRegistry) -> None:
    server = start_registry(data_dir=node.data_dir, args=AUTH_ARGS)
    passwords = node.create_token("edge-client", "--repository", "team/*", *PULL)
    assert logs_in(server, "edge-client", passwords["password2"])
    node.ok("token", "credential", "delete", "edge-client", "--password2")
    assert not logs_in(server, "edge-client", passwords["password2"])
    assert logs_in(server, "edge-client", passwords["password1"])


def test_disabled_token_is_refused_at_once_and_enabled_again_works(
    node: Node, start_registry: StartRegistry
) -> None:
    server = start_registry(data_dir=node.data_dir, args=AUTH_ARGS)
    passwords = node.create_token("edge-client", "--repository", "team/*", *PULL)
    assert logs_in(server, "edge-client", passwords["password1"])

    updated = node.json("token", "update", "edge-client", "--status", "disabled")
    assert updated["status"] == "disabled"
    assert not logs_in(server, "edge-client", passwords["password1"])

    node.ok("token", "update", "edge-client", "--status", "enabled")
    assert logs_in(server, "edge-client", passwords["password1"])


def test_deleted_token_is_refused_at_once(node: Node, start_registry: StartRegistry) -> None:
    server = start_registry(data_dir=node.data_dir, args=AUTH_ARGS)
    passwords = node.create_token("edge-client", "--repository", "team/*", *PULL)
    assert logs_in(server, "edge-client", passwords["password1"])
    node.ok("token", "delete", "edge-client", "--yes")
    assert not logs_in(server, "edge-client", passwords["password1"])


# --- limits and refusals ----------------------------------------------------------------------


def test_third_token_over_a_limit_of_two_fails_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[limits]\ntokens = 2\n")
    node = Node(tmp_path / "data", config)
    node.ok("scope-map", "create", "team-pull", "--repository", "team/*", *PULL)
    node.create_token("client-one", "--scope-map", "team-pull")
    node.create_token("client-two", "--scope-map", "team-pull")

    line = node.refused("token", "create", "client-three", "--scope-map", "team-pull")
    assert "limit" in line and "2" in line
    line = node.refused("token", "create", "client-four", "--repository", "team/*", *PULL)
    assert "limit" in line
    assert [t["name"] for t in node.json("token", "list")] == ["client-one", "client-two"]
    assert [s["name"] for s in node.json("scope-map", "list")] == ["team-pull"], (
        "a refused token create left its scope map behind"
    )


def test_scope_map_over_the_permission_limit_fails_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[limits]\nrepository_permissions = 1\n")
    node = Node(tmp_path / "data", config)
    line = node.refused(
        "scope-map", "create", "too-many",
        "--repository", "team/a", "content/read", "--repository", "team/b", "content/read",
    )
    assert "1" in line


@pytest.mark.parametrize(
    ("scenario", "args", "mentions"),
    [
        ("unknown action",
         ["scope-map", "create", "team-pull", "--repository", "team/*", "content/pull"],
         "content/pull"),
        ("bad pattern",
         ["scope-map", "create", "team-pull", "--repository", "Team/App", "content/read"],
         "Team/App"),
        ("missing scope map",
         ["token", "create", "edge-client", "--scope-map", "no-such-map"], "no-such-map"),
        ("bad token name", ["token", "create", "x!", "--scope-map", "team-base"], "x!"),
        ("bad scope map name",
         ["scope-map", "create", "tm", "--repository", "team/*", "content/read"], "tm"),
        ("duplicate scope map",
         ["scope-map", "create", "team-base", "--repository", "x/y", "content/read"],
         "already exists"),
        ("duplicate token", ["token", "create", "base-client", "--scope-map", "team-base"],
         "already exists"),
        ("unknown token", ["token", "show", "no-such-token"], "no-such-token"),
        ("unknown scope map", ["scope-map", "show", "no-such-map"], "no-such-map"),
        ("expiry in the past",
         ["token", "credential", "generate", "base-client", "--password1",
          "--expiration", "2001-01-01T00:00:00Z"], "past"),
        ("expiry that is not a date",
         ["token", "credential", "generate", "base-client", "--password1",
          "--expiration", "tomorrow"], "tomorrow"),
    ],
)
def test_refusal_is_one_line_and_exit_1(
    node_with_a_token: Node, scenario: str, args: list[str], mentions: str
) -> None:
    line = node_with_a_token.refused(*args)
    assert mentions in line, f"{scenario}: {line!r}"


@pytest.mark.parametrize(
    ("scenario", "args"),
    [
        ("repository without actions",
         ["scope-map", "create", "team-pull", "--repository", "team/*"]),
        ("repository without actions before another option",
         ["scope-map", "create", "team-pull", "--repository", "team/*", "--description", "x"]),
        ("scope map without repositories", ["scope-map", "create", "team-pull"]),
        ("token with neither scope map nor repositories", ["token", "create", "edge-client"]),
        ("token with both scope map and repositories",
         ["token", "create", "edge-client", "--scope-map", "m-map1", "--repository", "a",
          "content/read"]),
        ("unknown status",
         ["token", "create", "edge-client", "--scope-map", "team-pull", "--status", "off"]),
        ("no password named", ["token", "credential", "generate", "edge-client"]),
        ("both passwords named",
         ["token", "credential", "generate", "edge-client", "--password1", "--password2"]),
        ("both expiries",
         ["token", "credential", "generate", "edge-client", "--password1",
          "--expiration", "2100-01-01", "--expiration-in-days", "3"]),
        ("nothing to update", ["token", "update", "edge-client"]),
        ("unknown output", ["token", "list", "--output", "yaml"]),
    ],
)
def test_usage_error_is_one_line_and_exit_2(node: Node, scenario: str, args: list[str]) -> None:
    node.refused(*args, exit_code=2)


# --- confirmation -----------------------------------------------------------------------------


def test_delete_without_yes_and_no_terminal_refuses_and_keeps_the_token(node: Node) -> None:
    node.ok("scope-map", "create", "team-pull", "--repository", "team/*", *PULL)
    node.create_token("edge-client", "--scope-map", "team-pull")
    assert "--yes" in node.refused("token", "delete", "edge-client")
    assert "--yes" in node.refused("scope-map", "delete", "team-pull")
    node.ok("token", "show", "edge-client")
    node.ok("scope-map", "show", "team-pull")


def test_delete_at_a_terminal_asks_and_deletes_on_yes(node: Node) -> None:
    node.ok("scope-map", "create", "team-pull", "--repository", "team/*", *PULL)
    node.create_token("edge-client", "--scope-map", "team-pull")
    command, *args = node.args("token", "delete", "edge-client")
    child = pexpect.spawn(command, args, env=clean_env(), encoding="utf-8", timeout=30)
    child.expect("Delete token 'edge-client'")
    child.sendline("y")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "not found" in node.refused("token", "show", "edge-client")


# --- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "token", "token create", "token update", "token show", "token list", "token delete",
        "token credential", "token credential generate", "token credential delete",
        "scope-map", "scope-map create", "scope-map update", "scope-map show",
        "scope-map list", "scope-map delete",
    ],
)
def test_help_works_on_every_command(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", *command.split(), "--help"],
        env=clean_env(), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:"), result.stdout
    if command.count(" ") and not command.endswith("credential"):
        assert "--data-dir" in result.stdout
        # --yes is offered only where the command asks before it acts: the deletes.
        assert ("--yes" in result.stdout) == command.endswith(("token delete", "scope-map delete"))
