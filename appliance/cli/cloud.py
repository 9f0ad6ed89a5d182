"""`connected-registry cloud …`: make this node a root, and manage its connected registries the
way `az acr connected-registry` does (DESIGN.md §1-§2, §7).

Every verb but `init` works on this node's data directory by default; with `--registry URL` it
goes to that root's management API instead, as the admin token (`--username`, default
`cloudadmin`, and `--password`, or CONNECTED_REGISTRY_USERNAME / CONNECTED_REGISTRY_PASSWORD).

Multi-value flags take several values after one flag, as ACR's do, and may also be repeated:
`--repository a b --repository c`. They take every following word up to the next option, so the
positional NAME goes before them.

`cloud init` on a node that already is a root changes nothing and exits 0 (an imaging pipeline
may run it on every boot), unless it is asked for a different login server: that is refused.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from appliance.cli import cloud_registries, cloud_tokens
from appliance.cli.cloud_options import CloudGroup, credentials, root_args
from appliance.cli.options import load, node_options, open_store
from appliance.cli.output import emit, format_table, no_question_option, output_option
from appliance.config import with_role_defaults
from appliance.control.connection_string import ConnectionStringError, parse_endpoint
from appliance.control.node import CLOUD
from appliance.control.root import ADMIN, Root, RootRefused, make_root


@click.group(cls=CloudGroup)
def cloud() -> None:
    """The root: its connected registries, their sync tokens and settings (ACR's
    `az acr connected-registry`).

    \b
    Start with `connected-registry cloud init`, then for each device:
      connected-registry cloud create edge01 --repository 'apps/*' --mode ReadOnly
      connected-registry cloud get-settings edge01 --parent-protocol https \\
        --generate-password 1
    and activate the device with the connection string it prints.
    """


# -- init --------------------------------------------------------------------------------------


@cloud.command()
@click.option(
    "--login-server",
    metavar="HOST:PORT",
    envvar="CONNECTED_REGISTRY_LOGIN_SERVER",
    show_envvar=True,
    help="Where devices reach this root; goes into their connection strings.  "
    "[default: the root's listen address (0.0.0.0:443 unless configured), with this host's "
    "name for 0.0.0.0]",
)
@output_option
@no_question_option
@node_options
def init(
    login_server: str | None,
    output: str,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Make this node a root: it manages connected registries and serves their gateway API.

    Creates the admin token `cloudadmin` (scope map `cloudadmin`: every action on every
    repository) and prints its passwords, once: `cloud … --registry URL` logs in with them.
    """
    config = load(config_path, data_dir)
    if login_server is not None:
        try:
            parse_endpoint(login_server)
        except ConnectionStringError:
            raise click.BadParameter(
                f"{login_server!r} is not HOST:PORT", param_hint="--login-server"
            ) from None
    store = open_store(config, create=True)
    try:
        # Where it will listen as a root: 0.0.0.0:443 unless configured.
        layout = store.layout
        listen = with_role_defaults(
            config, CLOUD, layout.tls_server_cert, layout.tls_server_key
        ).listen
        root = make_root(
            store, credentials(store, config), login_server, (listen.host, listen.port)
        )
    except RootRefused as err:
        raise click.ClickException(str(err)) from None
    emit(
        output,
        {
            "role": CLOUD,
            "loginServer": root.login_server,
            "initialized": root.initialized,
            "adminToken": {
                "name": root.admin_token,
                "passwords": [{"name": k, "value": v} for k, v in sorted(root.passwords.items())],
            },
        },
        lambda: _init_text(root, root_args(config_path, data_dir, None, ADMIN, None)),
    )


def _init_text(root: Root, root_args: list[str]) -> str:
    if not root.initialized:
        return (
            f"This node is already a root (login server {root.login_server}, admin token "
            f"{root.admin_token!r}); nothing changed."
        )
    rows = format_table(["password", "value"], sorted(root.passwords.items()))
    node = f" {shlex.join(root_args)}" if root_args else ""
    login_server = root.login_server or ""
    host = login_server.rpartition(":")[0].strip("[]")
    return (
        f"This node is now a root; devices reach it at {login_server}.\n\n"
        f"Admin token {ADMIN!r}:\n{rows}\n\n"
        "These passwords are shown only once: store them now.\n"
        f"Next: `connected-registry tls generate{node} --host {host}` (it prints the `serve` "
        f"command, TLS and auth on), and `connected-registry cloud create NAME{node} "
        "--repository REPO…` for each device."
    )


for command in (
    cloud_registries.create,
    cloud_registries.update,
    cloud_registries.show,
    cloud_registries.list_,
    cloud_registries.delete,
    cloud_registries.resync,
    cloud_tokens.deactivate,
    cloud_tokens.get_settings,
    cloud_tokens.list_client_tokens,
    cloud_tokens.permissions,
):
    cloud.add_command(command)
