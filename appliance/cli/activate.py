"""`connected-registry activate` (the first-boot wizard) and `connected-registry deactivate`.

A person at a terminal is asked for the connection string (pasted; a malformed one is refused
field by field and asked for again), shown the parent it will trust, asked the login server, and
then the registry is claimed. Unattended (an imaging pipeline, the first-boot unit), everything
comes from options: `--connection-string`, `--connection-string-file` or the environment
variable `CONNECTED_REGISTRY_CONNECTION_STRING`, with `--yes`. The password is never printed:
what is shown is the redacted string.

After a successful activation on a systemd host with the packaged units, run as root, the data
directory is handed to the service user and the service and sync timer are started; anywhere
else the command prints how to start `connected-registry serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

import click

from appliance.cli.options import load, node_options
from appliance.cli.output import output_option
from appliance.config import Config
from appliance.control.activation import (
    Activation,
    ActivationError,
    default_login_server,
    login_server_host,
    login_server_port,
    parse_login_server,
)
from appliance.control.activation import activate as activate_node
from appliance.control.activation import deactivate as deactivate_node
from appliance.control.connection_string import (
    ConnectionString,
    ConnectionStringError,
    is_loopback,
    parse,
)
from appliance.control.gateway_client import GatewayError
from appliance.control.node import CLOUD, CONNECTED
from appliance.storage.layout import Layout, existing_state

SERVICE_UNIT = Path("/lib/systemd/system/connected-registry.service")
SERVICE_USER = "connected-registry"
UNITS = ("connected-registry.service", "connected-registry-sync.timer")
PROMPT = "Connection string (from `get-settings` on the parent)"


def _interactive() -> bool:
    return sys.stdin.isatty()


def _given_string(
    ctx: click.Context, connection_string: str | None, connection_string_file: Path | None
) -> str | None:
    """The connection string from the options: the flag, else the file, else the environment
    variable (click fills the flag from it; a file given on the command line wins over it)."""
    from_env = (
        ctx.get_parameter_source("connection_string") == click.core.ParameterSource.ENVIRONMENT
    )
    if connection_string is not None and connection_string_file is not None and not from_env:
        raise click.UsageError("give --connection-string or --connection-string-file, not both")
    if connection_string_file is not None:
        try:
            return connection_string_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise click.UsageError(
                f"cannot read {connection_string_file}: {err.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise click.UsageError(
                f"cannot read {connection_string_file}: it is not UTF-8 text"
            ) from None
    return connection_string


def _ask_connection_string() -> ConnectionString:
    while True:
        text = click.prompt(PROMPT, prompt_suffix=": ", default="", show_default=False)
        try:
            return parse(text)
        except ConnectionStringError as err:
            click.echo(f"Error: invalid connection string: {err}", err=True)


def _ask_login_server(default: str) -> str:
    while True:
        text = click.prompt("Login server clients will use (HOST:PORT)", default=default)
        try:
            return parse_login_server(text)
        except ValueError as err:
            click.echo(f"Error: {err}", err=True)


def _parent_line(connection: ConnectionString, ca_file: Path | None) -> str:
    """Whom the device will trust, and how its certificate is checked."""
    parent = connection.base_url
    if connection.protocol == "http":
        return f"Parent: {parent} (plain HTTP: a loopback parent, for development only)"
    if ca_file is not None:
        return f"Parent: {parent}, its certificate checked against the CA in {ca_file}"
    if connection.fingerprint is None:
        return f"Parent: {parent}, its certificate checked against the system's CAs"
    return f"Parent: {parent}, certificate fingerprint {connection.fingerprint}"


@click.command()
@node_options
@click.option(
    "--connection-string",
    envvar="CONNECTED_REGISTRY_CONNECTION_STRING",
    show_envvar=True,
    metavar="STRING",
    help="The connection string `get-settings --generate-password` printed on the parent.",
)
@click.option(
    "--connection-string-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the connection string from this file (e.g. /etc/connected-registry/"
    "connection-string).",
)
@click.option(
    "--login-server",
    envvar="CONNECTED_REGISTRY_LOGIN_SERVER",
    show_envvar=True,
    metavar="HOST:PORT",
    help="Where clients reach this registry.  [default: this host's name:443]",
)
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CONNECTED_REGISTRY_PARENT_CA_FILE",
    show_envvar=True,
    help="Trust the parent's certificate chain through this CA (PEM), not the system's CAs.",
)
@click.option("--yes", "-y", is_flag=True, help="Trust the parent and take defaults; ask nothing.")
@click.option(
    "--no-start", is_flag=True, help="Only write the state: do not start the systemd services."
)
@output_option
@click.pass_context
def activate(
    ctx: click.Context,
    config_path: Path | None,
    data_dir: Path | None,
    connection_string: str | None,
    connection_string_file: Path | None,
    login_server: str | None,
    ca_file: Path | None,
    yes: bool,
    no_start: bool,
    output: str,
) -> None:
    """Claim a connected registry on its parent and become it (the first-boot wizard).

    Nothing is written before the parent accepts. Running it again on an active node changes
    nothing. With --output json what it says on the way goes to stderr and the result to stdout.
    """
    result_out = _say_on_stderr(ctx, output)
    config = load(config_path, data_dir)
    data = config.data_dir.resolve()
    state = existing_state(Layout(data))
    if state.get("role") == CLOUD:
        raise click.ClickException(
            f"DENIED: {data} is a root (cloud init); a root has no parent to activate with"
        )
    text = _given_string(ctx, connection_string, connection_string_file)
    if text is None:
        if not _interactive():
            raise click.UsageError(
                "no connection string: give --connection-string, --connection-string-file or "
                "CONNECTED_REGISTRY_CONNECTION_STRING"
            )
        if state.get("role") == CONNECTED:
            _print_result(
                output,
                result_out,
                {"name": state.get("name"), "alreadyActive": True},
                f"This node is already activated as {state.get('name')} (parent "
                f"{state.get('parent_endpoint')}). Nothing changed.",
            )
            return
        connection = _ask_connection_string()
    else:
        try:
            connection = parse(text)
        except ConnectionStringError as err:
            raise click.UsageError(f"invalid connection string: {err}") from None
    if ca_file is not None and (connection.protocol == "http" or connection.fingerprint):
        raise click.UsageError(
            "--ca-file is for an https parent whose connection string pins no "
            "ParentCertificateFingerprint"
        )
    if login_server is not None:
        try:
            login_server = parse_login_server(login_server)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--login-server") from None
    confirm = connection.fingerprint is not None and not yes
    if confirm and not _interactive():
        raise click.ClickException(
            "refusing to trust the parent's certificate fingerprint without confirmation and no "
            "terminal to ask on: pass --yes"
        )
    ask_login = (
        login_server is None and _interactive() and not yes and state.get("role") != CONNECTED
    )
    shown = f"Connection string: {connection.redacted()}\n{_parent_line(connection, ca_file)}"
    # A person is shown what they are asked about; unattended, nothing is printed until the
    # parent has answered, so a refusal is the one line there is.
    asked = confirm or ask_login
    if asked:
        click.echo(shown)
        if confirm and not click.confirm("Trust this certificate for the parent?", default=False):
            raise click.ClickException("not activated: the parent's certificate was not trusted")
        if ask_login:
            login_server = _ask_login_server(
                state.get("login_server") or default_login_server()
            )
        click.echo(
            f"Activating {connection.registry_name} with the parent at {connection.base_url}…"
        )
    try:
        result = asyncio.run(
            activate_node(
                data,
                connection,
                login_server=login_server,
                ca_file=ca_file,
                make_certificate=config.tls_cert is None,
            )
        )
    except (ActivationError, GatewayError) as err:
        raise click.ClickException(str(err)) from None
    if not asked:
        click.echo(shown)
    if result.already_active:
        _print_result(
            output,
            result_out,
            _document(result, started=False, serve=None),
            f"{result.name} is already activated on this node (instance {result.instance_id}); "
            "nothing changed.",
        )
        return
    started = not no_start and SERVICE_UNIT.exists() and os.geteuid() == 0
    serve = None if started else _serve_command(result, config_path, config)
    if output.lower() == "json":
        if started:
            _start_services(data)
        _print_result(output, result_out, _document(result, started, serve), "")
        return
    # Said before starting the services: if that fails, what was activated is still shown.
    click.echo("\n".join(_report(result)))
    if started:
        click.echo(_start_services(data))
    else:
        click.echo(f"Start the registry with:\n  {shlex.join(serve or [])}")


def _say_on_stderr(ctx: click.Context, output: str) -> TextIO:
    """Where the result goes: stdout. With --output json, everything else said until the
    command ends (prompts, progress) goes to stderr, so stdout holds one JSON document."""
    result_out = sys.stdout
    if output.lower() == "json":
        ctx.with_resource(contextlib.redirect_stdout(sys.stderr))
    return result_out


def _print_result(output: str, out: TextIO, document: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(document, indent=2) if output.lower() == "json" else text, file=out)


def _document(result: Activation, started: bool, serve: list[str] | None) -> dict[str, Any]:
    certificates = result.certificates
    return {
        "name": result.name,
        "mode": result.mode,
        "instanceId": result.instance_id,
        "loginServer": result.login_server,
        "parent": result.parent,
        "dataDir": str(result.data_dir),
        "alreadyActive": result.already_active,
        "certificate": None
        if certificates is None
        else {
            "hosts": [str(h) for h in certificates.hosts],
            "caCert": str(certificates.ca_cert),
            "caFingerprint": certificates.ca_fingerprint,
        },
        "skippedClientTokens": list(result.skipped_tokens),
        "servicesStarted": started,
        "serve": serve,
    }


def _report(result: Activation) -> list[str]:
    """The lines that say what activation did; its warnings go to stderr at once."""
    lines = [
        f"Activated {result.name} ({result.mode}) with the parent at {result.parent}.",
        f"  instance:      {result.instance_id}",
        f"  login server:  {result.login_server}",
        f"  data:          {result.data_dir}",
    ]
    if result.certificates is not None:
        hosts = ", ".join(str(h) for h in result.certificates.hosts)
        lines.append(
            f"  TLS:           made a certificate for {hosts} (clients trust "
            f"{result.certificates.ca_cert}, fingerprint {result.certificates.ca_fingerprint})"
        )
    for name in result.skipped_tokens:
        click.echo(
            f"Warning: client token {name!r} from the parent was not installed: a local token "
            "or scope map has that name",
            err=True,
        )
    return lines


def _start_services(data: Path) -> str:
    """Give the state to the service user, then enable and start the service and its timer."""
    try:
        user = pwd.getpwnam(SERVICE_USER)
        for folder, folders, files in os.walk(data):
            os.lchown(folder, user.pw_uid, user.pw_gid)
            for name in folders + files:
                os.lchown(os.path.join(folder, name), user.pw_uid, user.pw_gid)
    except (KeyError, OSError) as err:
        raise click.ClickException(
            f"activated, but cannot hand {data} to user {SERVICE_USER}: {err}"
        ) from None
    done = subprocess.run(
        ["systemctl", "enable", "--now", *UNITS], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise click.ClickException(
            f"activated, but systemctl could not start the service: {reason}"
        )
    return f"Started {' and '.join(UNITS)}."


def _serve_command(result: Activation, config_path: Path | None, config: Config) -> list[str]:
    """The `serve` that answers on the login server: on its loopback address when it is one
    (clients on this machine only), else on every address."""
    layout = Layout(result.data_dir)
    host = login_server_host(result.login_server)
    if not is_loopback(host):
        host = "0.0.0.0"
    listen = f"[{host}]" if ":" in host else host
    command = ["connected-registry", "serve"]
    if config_path is not None:
        command += ["--config", str(config_path.resolve())]
    return [
        *command,
        "--data-dir",
        str(result.data_dir),
        "--listen",
        f"{listen}:{login_server_port(result.login_server)}",
        "--tls-cert",
        str(config.tls_cert or layout.tls_server_cert),
        "--tls-key",
        str(config.tls_key or layout.tls_server_key),
        "--auth",
    ]


@click.command()
@node_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask before deactivating this node.")
@click.option(
    "--force",
    is_flag=True,
    help="Deactivate this node even if the parent cannot be reached or refuses (the parent "
    "then still shows it Active: run `cloud deactivate` there).",
)
@output_option
def deactivate(
    config_path: Path | None, data_dir: Path | None, yes: bool, force: bool, output: str
) -> None:
    """Release this node's claim on its parent; its content and tokens stay.

    Another instance (or this one, again) can then activate the connected registry.
    """
    config = load(config_path, data_dir)
    data = config.data_dir.resolve()
    state = existing_state(Layout(data))
    if state.get("role") != CONNECTED:
        raise click.ClickException(f"NOT_ACTIVATED: {data} is not an activated connected registry")
    if not yes:
        if not _interactive():
            raise click.ClickException(
                "refusing to deactivate without confirmation and no terminal to ask on: pass --yes"
            )
        click.confirm(
            f"Deactivate {state.get('name')} (parent {state.get('parent_endpoint')})?", abort=True
        )
    try:
        result = asyncio.run(deactivate_node(data, force=force))
    except (ActivationError, GatewayError) as err:
        raise click.ClickException(str(err)) from None
    if result.parent_told:
        text = f"Deactivated {result.name}; the parent at {result.parent} released it."
    else:
        text = (
            f"Deactivated {result.name} on this node only: {result.parent_error}. Run "
            f"`connected-registry cloud deactivate {result.name}` on the root."
        )
    document = {
        "name": result.name,
        "parent": result.parent,
        "parentTold": result.parent_told,
        "parentError": result.parent_error,
    }
    _print_result(output, sys.stdout, document, text)
