"""What a stranger reads: help, hints that are pasted as printed, errors that say what is
wrong, and warnings where a node runs without what its role expects.

Every command is the real one in a child process (`python -m appliance`, stdin /dev/null); the
hierarchy cases use a real root served on loopback (tests/support/hierarchy.py's).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.cli import one_error_line, run
from support.hierarchy import Root, activate
from support.server import free_port

if TYPE_CHECKING:
    from support.server import RegistryProcess

    StartRegistry = Callable[..., RegistryProcess]


def served_status(device: Path) -> dict:
    """`status --output json` once the service answers on its control socket."""
    deadline = time.monotonic() + 20
    while not (device / "control.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return json.loads(ok("status", "--data-dir", str(device), "-o", "json"))


def ok(*args: str) -> str:
    result = run(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["cloud"], ["token", "credential"]])
def test_a_command_given_nothing_prints_its_help_and_exits_0(command: list[str]) -> None:
    result = run(*command)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: {shlex.join(['connected-registry', *command])} ")
    assert "Commands:" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("command", "asks"),
    [
        ("cloud init", None),
        ("cloud create", None),
        ("cloud list", None),
        ("cloud show", None),
        ("cloud get-settings", "generating a new password"),
        ("cloud delete", "deleting the connected registry"),
        ("cloud deactivate", "releasing the connected registry"),
        ("token create", None),
        ("token list", None),
        ("token credential delete", None),
        ("token delete", "deleting the token"),
        ("scope-map delete", "deleting the scope map"),
        ("deactivate", "deactivating this node"),
    ],
)
def test_yes_is_offered_only_by_commands_that_ask_and_says_what_it_skips(
    command: str, asks: str | None
) -> None:
    text = ok(*command.split(), "--help")

    assert ("--yes" in text) == (asks is not None), text
    if asks is not None:
        assert f"Do not ask before {asks}" in " ".join(text.split())


@pytest.mark.parametrize(
    ("command", "variables"),
    [
        ("cloud create", ["CONNECTED_REGISTRY_PASSWORD", "CONNECTED_REGISTRY_URL",
                          "CONNECTED_REGISTRY_DATA_DIR", "CONNECTED_REGISTRY_OUTPUT"]),
        ("serve", ["CONNECTED_REGISTRY_LISTEN", "CONNECTED_REGISTRY_TLS_CERT",
                   "CONNECTED_REGISTRY_CONFIG"]),
        ("activate", ["CONNECTED_REGISTRY_CONNECTION_STRING", "CONNECTED_REGISTRY_LOGIN_SERVER"]),
    ],
)
def test_help_names_the_environment_variables(command: str, variables: list[str]) -> None:
    text = " ".join(ok(*command.split(), "--help").split())

    for variable in variables:
        assert f"env var: {variable}" in text, f"{variable} not in `{command} --help`"


def test_a_verb_that_asks_nothing_still_takes_yes(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    ok("token", "create", "reader1", "--data-dir", data, "--repository", "a/*", "content/read",
       "--yes")

    assert [t["name"] for t in json.loads(ok("token", "list", "--data-dir", data, "-o", "json",
                                              "--yes"))] == ["reader1"]


# -- --output json on the deletes ---------------------------------------------------------------


def test_the_deletes_answer_in_json(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    ok("token", "create", "reader1", "--data-dir", data, "--repository", "a/*", "content/read")

    revoked = ok("token", "credential", "delete", "reader1", "--password2", "--data-dir", data,
                 "-o", "json")
    deleted = ok("token", "delete", "reader1", "--yes", "--data-dir", data, "--output", "json")
    unmapped = ok("scope-map", "delete", "reader1-scope-map", "--yes", "--data-dir", data,
                  "-o", "json")

    assert json.loads(revoked) == {"name": "reader1", "password": "password2", "deleted": True}
    assert json.loads(deleted) == {"name": "reader1", "deleted": True}
    assert json.loads(unmapped) == {"name": "reader1-scope-map", "deleted": True}


# -- config errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('listen = "127.0.0.1:99999"\n',
         "'listen' port 99999 is out of range (1-65535) in '127.0.0.1:99999'"),
        ('listen = "nohost"\n', "'listen' must be HOST:PORT, got 'nohost'"),
        ("[limit]\ntokens = 3\n", "unknown key 'limit' (did you mean 'limits'?)"),
        ("[auth]\nenable = true\n", "unknown key [auth] 'enable' (did you mean 'enabled'?)"),
        ('log_levle = "info"\n', "unknown key 'log_levle' (did you mean 'log_level'?)"),
        ('[[upstream]]\nurl = "http://127.0.0.1:1"\nrepositories = ["a"]\ntag_includ = "x"\n',
         "unknown key [[upstream]] #1 'tag_includ' (did you mean 'tag_include'?)"),
    ],
)
def test_a_config_error_says_what_is_wrong(tmp_path: Path, text: str, says: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)

    result = run("status", "--config", str(config), "--data-dir", str(tmp_path / "data"))

    assert result.returncode == 2
    assert one_error_line(result) == f"Error: {config}: {says}"


def test_a_listen_flag_out_of_range_says_so(tmp_path: Path) -> None:
    result = run("serve", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0")

    assert result.returncode == 2
    assert one_error_line(result) == (
        "Error: --listen port 0 is out of range (1-65535) in '127.0.0.1:0'"
    )


# -- hints pasted as printed --------------------------------------------------------------------


def test_status_calls_a_root_a_root(tmp_path: Path) -> None:
    data = str(tmp_path / "root")
    ok("cloud", "init", "--data-dir", data, "--login-server", "127.0.0.1:6001")

    assert ok("status", "--data-dir", data).splitlines()[0].split() == ["Role:", "root"]
    assert json.loads(ok("status", "--data-dir", data, "-o", "json"))["role"] == "cloud"


def test_cloud_create_next_step_runs_on_the_same_root_as_printed(tmp_path: Path) -> None:
    data = tmp_path / "root"
    init = ok("cloud", "init", "--data-dir", str(data), "--login-server", "127.0.0.1:6001")
    assert f"connected-registry tls generate --data-dir {data} --host 127.0.0.1" in init

    created = ok("cloud", "create", "edge01", "--data-dir", str(data), "--repository", "a/*")
    hint = created.rpartition("Next: ")[2].strip()

    assert hint.startswith(f"connected-registry cloud get-settings edge01 --data-dir {data} ")
    # Run from elsewhere, as printed (plus --yes: no terminal here to confirm the password).
    settings = run(*shlex.split(hint)[1:], "--yes")
    assert settings.returncode == 0, settings.stderr
    assert settings.stdout.startswith("ConnectedRegistryName=edge01;")


def test_activate_answers_in_json_and_its_serve_hint_listens_on_the_login_server(
    root: Root, tmp_path: Path
) -> None:
    password = root.create("edge01", ["demo/*"])
    device = tmp_path / "device"
    port = free_port()

    result = activate(
        device, root.connection("edge01", password), "--login-server", f"127.0.0.1:{port}",
        "--output", "json",
    )

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["name"], document["alreadyActive"]) == ("edge01", False)
    assert f"Parent: {root.server.url}" in result.stderr  # progress on stderr, JSON alone on stdout
    serve = document["serve"]
    # A loopback login server is served on that loopback address, not on every address.
    assert serve[serve.index("--listen") + 1] == f"127.0.0.1:{port}"
    assert serve[serve.index("--data-dir") + 1] == str(device.resolve())
    assert "--auth" in serve

    released = run("deactivate", "--data-dir", str(device), "--yes", "-o", "json")
    assert released.returncode == 0, released.stderr
    assert json.loads(released.stdout)["parentTold"] is True


# -- errors that say what happened --------------------------------------------------------------


@pytest.mark.parametrize("fingerprint", [None, "sha256:" + "0" * 64])
def test_an_https_string_for_a_plain_http_parent_says_the_parent_speaks_plain_http(
    root: Root, tmp_path: Path, fingerprint: str | None
) -> None:
    password = root.create("edge01", ["demo/*"])
    connection = root.connection("edge01", password, protocol="https", fingerprint=fingerprint)

    result = activate(tmp_path / "device", connection)

    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("Error: PLAIN_HTTP: the parent at 127.0.0.1:"), line
    assert "answers in plain HTTP, not HTTPS" in line
    assert "SSLContext" not in line


def test_a_device_deleted_on_the_root_hears_so_once_when_it_syncs(
    root: Root, tmp_path: Path
) -> None:
    password = root.create("edge01", ["demo/*"])
    device = tmp_path / "device"
    assert activate(device, root.connection("edge01", password)).returncode == 0
    ok("cloud", "delete", "edge01", "--data-dir", str(root.server.data_dir), "--yes")

    result = run("sync", "--data-dir", str(device))

    assert result.returncode == 1
    assert one_error_line(result) == (
        "Error: NAME_UNKNOWN: the parent has no connected registry 'edge01' (deleted there?); "
        "`connected-registry deactivate --force` releases this node"
    )


# -- a device served without what its role expects ---------------------------------------------


def test_a_device_served_without_auth_over_plain_http_warns_in_the_log_and_in_status(
    root: Root, tmp_path: Path, start_registry: StartRegistry
) -> None:
    password = root.create("edge01", ["demo/*"])
    device = tmp_path / "device"
    assert activate(device, root.connection("edge01", password)).returncode == 0

    server = start_registry(data_dir=device, args=["--no-auth", "--insecure-http"])

    log = server.log()
    assert "WARNING" in log and "auth is off on an activated connected registry" in log
    assert "plain HTTP on an activated connected registry (--insecure-http)" in log
    warnings = served_status(device)["warnings"]
    assert [w.split(" (")[0] for w in warnings] == [
        "auth is off on an activated connected registry",
        "plain HTTP on an activated connected registry",
    ]
    table = ok("status", "--data-dir", str(device))
    assert table.count("Warning:") == 2, table


def test_a_device_served_as_its_role_expects_has_no_warnings(
    root: Root, tmp_path: Path, start_registry: StartRegistry
) -> None:
    password = root.create("edge01", ["demo/*"])
    device = tmp_path / "device"
    assert activate(device, root.connection("edge01", password)).returncode == 0

    server = start_registry(data_dir=device, args=[
        "--tls-cert", str(device / "tls" / "server.crt"),
        "--tls-key", str(device / "secrets" / "tls-server.key"),
    ])

    assert "WARNING" not in server.log()
    assert served_status(device)["warnings"] == []
