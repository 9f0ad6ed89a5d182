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

import functools
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from appliance.auth.tokens import Credentials
from appliance.cli.options import load, node_options, open_store
from appliance.cli.output import (
    CredentialGroup,
    emit,
    format_fields,
    format_table,
    no_question_option,
    output_option,
    yes_option,
)
from appliance.config import Config, with_role_defaults
from appliance.control.connection_string import ConnectionStringError, parse_endpoint
from appliance.control.hierarchy import (
    LOG_LEVELS,
    Hierarchy,
    HierarchyError,
    offline_after_from,
)
from appliance.control.management_client import (
    PROTOCOLS,
    LocalManagement,
    Management,
    RemoteManagement,
)
from appliance.control.node import CLOUD, NodeState
from appliance.control.roles import MODES, READ_WRITE
from appliance.control.root import ADMIN, Root, RootRefused, make_root
from appliance.control.schedule import CONTINUOUS, DEFAULT_TTL
from appliance.storage.store import Store

COLUMNS = (
    "name",
    "mode",
    "connection state",
    "parent",
    "login server",
    "last sync (utc)",
    "sync schedule",
    "sync window",
)

Json = dict[str, Any]


class CloudGroup(CredentialGroup):
    """Refusals end as one line with their code (`Error: NAME_UNKNOWN: …`), exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HierarchyError as err:
            raise click.ClickException(f"{err.code}: {err.message}") from None


class ManyValues(click.Option):
    """ACR's `--repository a b c`: several values after one flag, the flag also repeatable;
    the value is one flat tuple. Takes every following word up to the next option."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, multiple=True, **kwargs)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        handler = parser._long_opt[self.opts[0]]
        process = handler.process

        def take_values(value: str, state: Any) -> None:
            process(value, state)
            while state.rargs and not state.rargs[0].startswith("-"):
                process(state.rargs.pop(0), state)

        handler.process = take_values


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
            store, _credentials(store, config), login_server, (listen.host, listen.port)
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
        lambda: _init_text(root, _root_args(config_path, data_dir, None, ADMIN, None)),
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


# -- reaching the root ---------------------------------------------------------------------------


def _credentials(store: Store, config: Config) -> Credentials:
    # On the store's own connection: Hierarchy's transactions contain the token writes, and a
    # second connection would wait on the first's write lock.
    return Credentials(
        store.db,
        max_tokens=config.limits.tokens,
        max_scope_maps=config.limits.scope_maps,
        max_permissions=config.limits.repository_permissions,
    )


def _management(
    config_path: Path | None,
    data_dir: Path | None,
    registry: str | None,
    username: str,
    password: str | None,
    ca_file: Path | None,
) -> Management:
    if registry is not None:
        if not password:
            raise click.UsageError(
                "--registry needs the admin token's password: --password or "
                "CONNECTED_REGISTRY_PASSWORD"
            )
        try:
            return RemoteManagement(registry, username, password, ca_file)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--registry") from None
    config = load(config_path, data_dir)
    store = open_store(config)
    if NodeState(store).role != CLOUD:
        raise click.ClickException(
            f"{config.data_dir} is not a root: `connected-registry cloud init` makes it one, "
            "or give --registry URL of a root"
        )
    hierarchy = Hierarchy(
        store,
        _credentials(store, config),
        max_client_tokens=config.limits.client_tokens,
        offline_after=offline_after_from(config.offline_after),
    )
    return LocalManagement(hierarchy, store)


def root_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--registry`/`--username`/`--password`/`--ca-file` and the node options; the command
    gets `manage`, the Management they lead to."""

    @functools.wraps(f)
    def command(
        *args: Any,
        registry: str | None,
        username: str,
        password: str | None,
        ca_file: Path | None,
        config_path: Path | None,
        data_dir: Path | None,
        **kwargs: Any,
    ) -> Any:
        manage = _management(config_path, data_dir, registry, username, password, ca_file)
        click.get_current_context().meta[ROOT_ARGS] = _root_args(
            config_path, data_dir, registry, username, ca_file
        )
        return f(*args, manage=manage, **kwargs)

    options = [
        click.option(
            "--registry",
            "-r",
            metavar="URL",
            envvar="CONNECTED_REGISTRY_URL",
            show_envvar=True,
            help="Manage the root at URL (https://HOST:PORT) through its management API, "
            "instead of this node's data directory.",
        ),
        click.option(
            "--username",
            "-u",
            metavar="NAME",
            default=ADMIN,
            show_default=True,
            envvar="CONNECTED_REGISTRY_USERNAME",
            show_envvar=True,
            help="With --registry: the admin token's name.",
        ),
        click.option(
            "--password",
            metavar="PASSWORD",
            envvar="CONNECTED_REGISTRY_PASSWORD",
            show_envvar=True,
            help="With --registry: the admin token's password (prefer the environment "
            "variable: a flag shows in `ps`).",
        ),
        click.option(
            "--ca-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            envvar="CONNECTED_REGISTRY_CA_FILE",
            show_envvar=True,
            help="With --registry: the CA that signed the root's certificate (e.g. its "
            "tls/ca.crt), when the system does not trust it.",
        ),
        node_options,
    ]
    for option in reversed(options):
        command = option(command)
    return command


ROOT_ARGS = "connected-registry.root-args"


def _root_args(
    config_path: Path | None,
    data_dir: Path | None,
    registry: str | None,
    username: str,
    ca_file: Path | None,
) -> list[str]:
    """The options that reach the same root again, for the commands a hint prints (never the
    password: CONNECTED_REGISTRY_PASSWORD keeps it out of the shell history)."""
    if registry is not None:
        args = ["--registry", registry]
        if username != ADMIN:
            args += ["--username", username]
        return args + (["--ca-file", str(ca_file.resolve())] if ca_file else [])
    args = ["--config", str(config_path.resolve())] if config_path else []
    return args + (["--data-dir", str(data_dir.resolve())] if data_dir else [])


def _confirm(question: str, yes: bool) -> None:
    """Go on with `--yes`, or when a person at a terminal says yes."""
    if yes:
        return
    if not click.get_text_stream("stdin").isatty():
        raise click.ClickException(
            "refusing to go on without confirmation and no terminal to ask on: pass --yes"
        )
    click.confirm(question, abort=True)


# -- rendering -----------------------------------------------------------------------------------


def _row(cr: Json) -> tuple[str, ...]:
    return (
        cr["name"],
        cr["mode"],
        cr["connectionState"],
        cr["parent"] or "-",
        cr["loginServer"] or "-",
        cr["lastSyncTime"] or "-",
        cr["syncSchedule"],
        cr["syncWindow"] or "-",
    )


def _table(registries: list[Json]) -> str:
    return format_table(COLUMNS, [_row(cr) for cr in registries])


def describe(cr: Json) -> str:
    """ACR's table row, then what the row leaves out."""
    fields = format_fields(
        [
            ("Activation", cr["activationStatus"]),
            ("Repositories", " ".join(cr["repositories"])),
            ("Client tokens", " ".join(cr["clientTokens"]) or "-"),
            ("Tag filters", _tag_filters(cr)),
            ("Message TTL", cr["messageTtl"]),
            ("Log level", cr["logLevel"]),
            ("Sync token", cr["syncToken"]),
            ("Resync requested", "yes" if cr["resyncRequested"] else "no"),
        ]
    )
    return f"{_table([cr])}\n\n{fields}"


def _tag_filters(cr: Json) -> str:
    filters = [
        f"{label} {cr[key]}"
        for label, key in (
            ("include", "tagInclude"), ("exclude", "tagExclude"), ("semver", "tagSemver")
        )
        if cr.get(key)
    ]
    return "; ".join(filters) or "-"


def _describe_scope_map(scope: Json) -> str:
    repositories = format_table(
        ["repository", "actions"],
        [(p["repository"], " ".join(p["actions"])) for p in scope["repositories"]],
    )
    gateways = format_table(
        ["gateway", "actions"],
        [(g["gateway"], " ".join(g["actions"])) for g in scope["gateways"]],
    )
    return f"Scope map {scope['name']!r}:\n\n{repositories}\n\n{gateways}"


# -- the verbs -----------------------------------------------------------------------------------


many = functools.partial(click.option, cls=ManyValues)


def tag_filter_options(removable: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--tag-include`, `--tag-exclude`, `--tag-semver`: which tags of its repositories the
    connected registry syncs (the management API's tagInclude, tagExclude, tagSemver)."""
    remove = " An empty value removes the filter." if removable else ""
    options = [
        click.option(
            "--tag-include",
            metavar="REGEX",
            help=f"Sync only tags this Python regex finds (anchor with ^…$).{remove}",
        ),
        click.option(
            "--tag-exclude", metavar="REGEX", help=f"Never sync tags this regex finds.{remove}"
        ),
        click.option(
            "--tag-semver",
            metavar="RANGE",
            help="Sync only tags that are versions in this semver range, e.g. '>=1.2 <2' "
            f"(README: \"Tag filters\").{remove}",
        ),
    ]

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@cloud.command()
@click.argument("name")
@many(
    "--repository",
    "repositories",
    required=True,
    metavar="REPO [REPO…]",
    help="Repositories (or patterns: `*` within a segment, `**` across) to sync; within the "
    "parent's.",
)
@click.option(
    "--mode",
    "-m",
    type=click.Choice(MODES, case_sensitive=False),
    metavar="ReadWrite|ReadOnly",
    default=READ_WRITE,
    show_default=True,
    help="ReadWrite: clients push and pull, pushes sync up. ReadOnly: clients only pull.",
)
@click.option(
    "--parent", "-p", metavar="NAME", help="The parent connected registry.  [default: the root]"
)
@many("--client-tokens", metavar="TOKEN [TOKEN…]", help="Tokens clients log in with there.")
@click.option(
    "--sync-schedule",
    "-s",
    metavar="CRON",
    default=CONTINUOUS,
    show_default=True,
    help="When to sync (cron, UTC); the default is continuously.",
)
@click.option(
    "--sync-window",
    "-w",
    metavar="ISO8601",
    help="How long each sync may run, PT1H-P7D; needed with a --sync-schedule.",
)
@click.option(
    "--sync-message-ttl",
    metavar="ISO8601",
    default=DEFAULT_TTL,
    show_default=True,
    help="How long sync messages are kept, P1D-P90D.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    metavar="LEVEL",
    default="Information",
    help=f"One of {', '.join(LOG_LEVELS)}.",
    show_default=True,
)
@tag_filter_options(removable=False)
@output_option
@no_question_option
@root_options
def create(
    manage: Management,
    name: str,
    repositories: tuple[str, ...],
    mode: str,
    parent: str | None,
    client_tokens: tuple[str, ...],
    sync_schedule: str,
    sync_window: str | None,
    sync_message_ttl: str,
    log_level: str,
    tag_include: str | None,
    tag_exclude: str | None,
    tag_semver: str | None,
    output: str,
) -> None:
    """Create connected registry NAME (5-50 letters and digits), with its sync token and scope
    map NAME; every ancestor's sync token gains its permissions.

    \b
    Examples:
      connected-registry cloud create edge01 --repository 'apps/*' base/alpine
      connected-registry cloud create shelf02 --parent edge01 --mode ReadOnly \\
        --repository apps/web --sync-schedule '0 2 * * *' --sync-window PT4H
    """
    created = manage.create(
        {
            "name": name,
            "repositories": list(repositories),
            "mode": mode,
            "parent": parent,
            "clientTokens": list(client_tokens),
            "syncSchedule": sync_schedule,
            "syncWindow": sync_window,
            "messageTtl": sync_message_ttl,
            "logLevel": log_level,
            "tagInclude": tag_include,
            "tagExclude": tag_exclude,
            "tagSemver": tag_semver,
        }
    )
    root = click.get_current_context().meta[ROOT_ARGS]
    hint = ["connected-registry", "cloud", "get-settings", name, *root]
    hint += ["--parent-protocol", "https", "--generate-password", "1"]
    emit(output, created, lambda: f"{describe(created)}\n\nNext: {shlex.join(hint)}")


@cloud.command()
@click.argument("name")
@click.option("--sync-schedule", "-s", metavar="CRON", help="When to sync (cron, UTC).")
@click.option("--sync-window", "-w", metavar="ISO8601", help="How long each sync may run.")
@click.option("--sync-message-ttl", metavar="ISO8601", help="How long sync messages are kept.")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    metavar="LEVEL",
    help=f"One of {', '.join(LOG_LEVELS)}.",
)
@many("--add-client-tokens", metavar="TOKEN [TOKEN…]", help="Tokens to accept there too.")
@many("--remove-client-tokens", metavar="TOKEN [TOKEN…]", help="Tokens to stop accepting.")
@tag_filter_options(removable=True)
@output_option
@no_question_option
@root_options
def update(
    manage: Management,
    name: str,
    sync_schedule: str | None,
    sync_window: str | None,
    sync_message_ttl: str | None,
    log_level: str | None,
    add_client_tokens: tuple[str, ...],
    remove_client_tokens: tuple[str, ...],
    tag_include: str | None,
    tag_exclude: str | None,
    tag_semver: str | None,
    output: str,
) -> None:
    """Change connected registry NAME's schedule, window, TTL, log level, client tokens or tag
    filters; its instance picks them up at its next sync. Mode and parent never change."""
    body = {
        "syncSchedule": sync_schedule,
        "syncWindow": sync_window,
        "messageTtl": sync_message_ttl,
        "logLevel": log_level,
        "addClientTokens": list(add_client_tokens) or None,
        "removeClientTokens": list(remove_client_tokens) or None,
        "tagInclude": tag_include,
        "tagExclude": tag_exclude,
        "tagSemver": tag_semver,
    }
    if all(value is None for value in body.values()):
        raise click.UsageError(
            "nothing to change: give --sync-schedule, --sync-window, --sync-message-ttl, "
            "--log-level, --add-client-tokens, --remove-client-tokens, --tag-include, "
            "--tag-exclude or --tag-semver"
        )
    updated = manage.update(name, body)
    emit(output, updated, lambda: describe(updated))


@cloud.command()
@click.argument("name")
@output_option
@no_question_option
@root_options
def show(manage: Management, name: str, output: str) -> None:
    """Show connected registry NAME: its settings and what its instance last reported."""
    found = manage.show(name)
    emit(output, found, lambda: describe(found))


@cloud.command("list")
@click.option("--parent", "-p", metavar="NAME", help="Only those below this connected registry.")
@click.option(
    "--no-children", is_flag=True, help="Only the immediate children (of the root, or of -p)."
)
@output_option
@no_question_option
@root_options
def list_(
    manage: Management, parent: str | None, no_children: bool, output: str
) -> None:
    """List the connected registries: all, or those below --parent."""
    found = manage.list(parent, no_children)
    emit(output, found, lambda: _table(found))


@cloud.command()
@click.argument("name")
@click.option(
    "--cleanup",
    is_flag=True,
    help="Also delete its sync token and scope map, and its gateway actions on its ancestors.",
)
@output_option
@yes_option("deleting the connected registry")
@root_options
def delete(manage: Management, name: str, cleanup: bool, output: str, yes: bool) -> None:
    """Delete connected registry NAME (refused while it has children). Remove it from the
    device too: it can't sync any more."""
    _confirm(f"Delete connected registry {name!r}?", yes)
    commands = manage.delete(name, cleanup=cleanup)
    emit(
        output,
        {"name": name, "cleanup": cleanup, "commands": commands},
        lambda: _deleted_text(name, commands),
    )


def _deleted_text(name: str, commands: list[str]) -> str:
    if not commands:
        return f"Deleted connected registry {name!r}, its sync token and scope map."
    steps = "\n".join(f"  {command}" for command in commands)
    return (
        f"Deleted connected registry {name!r}. Its sync token and scope map are kept; "
        f"to remove them, on the root:\n{steps}"
    )


@cloud.command()
@click.argument("name")
@output_option
@yes_option("releasing the connected registry from its instance")
@root_options
def deactivate(manage: Management, name: str, output: str, yes: bool) -> None:
    """Release connected registry NAME from the instance that activated it, so that another
    (a replaced device) can activate it."""
    _confirm(
        f"Deactivate connected registry {name!r}? Its current instance can no longer report "
        "and a new one may activate it.",
        yes,
    )
    found = manage.deactivate(name)
    emit(
        output,
        found,
        lambda: f"Deactivated connected registry {name!r}: a new instance may activate it now.",
    )


@cloud.command("get-settings")
@click.argument("name")
@click.option(
    "--parent-protocol",
    type=click.Choice(PROTOCOLS),
    help="How the device reaches its parent: https, or http for a loopback parent.  [required]",
)
@click.option(
    "--generate-password",
    type=click.Choice(["1", "2"]),
    help="Generate (rotate) password1 or password2 of the sync token and put it in the "
    "connection string; a device using the old one must be given the new string.",
)
@output_option
@yes_option("generating a new password (--generate-password)")
@root_options
def get_settings(
    manage: Management,
    name: str,
    parent_protocol: str | None,
    generate_password: str | None,
    output: str,
    yes: bool,
) -> None:
    """Print the connection string that activates connected registry NAME on its device."""
    if parent_protocol is None:
        # Checked here, not by click: its message for a missing choice spans several lines.
        raise click.UsageError("Missing option '--parent-protocol' (https or http).")
    number = int(generate_password) if generate_password else None
    if number is not None:
        _confirm(
            f"Generate a new password{number} for sync token {name!r}? A device using the "
            f"current password{number} stops syncing until it gets the new connection string.",
            yes,
        )
    settings = manage.get_settings(name, parent_protocol, number)
    emit(output, settings, lambda: _settings_text(settings))


def _settings_text(settings: Json) -> str:
    if settings["syncTokenPassword"] is None:
        note = "Without --generate-password 1|2 the string has no password and can't activate."
    else:
        note = "The password is shown only once: store the connection string now."
    return f"{settings['connectionString']}\n\n{note}"


@cloud.command("list-client-tokens")
@click.argument("name")
@output_option
@no_question_option
@root_options
def list_client_tokens(manage: Management, name: str, output: str) -> None:
    """List the client tokens connected registry NAME accepts."""
    tokens = manage.client_tokens(name)
    emit(
        output,
        tokens,
        lambda: format_table(
            ["name", "scope map", "status"],
            [(t["name"], t.get("scopeMap") or "-", t["status"]) for t in tokens],
        ),
    )


@cloud.group(cls=CloudGroup)
def permissions() -> None:
    """The repositories a connected registry syncs: its sync scope map."""


@permissions.command("show")
@click.argument("name")
@output_option
@no_question_option
@root_options
def permissions_show(manage: Management, name: str, output: str) -> None:
    """Show the sync scope map of connected registry NAME."""
    scope = manage.permissions(name)
    emit(output, scope, lambda: _describe_scope_map(scope))


@permissions.command("update")
@click.argument("name")
@many(
    "--add",
    metavar="REPO [REPO…]",
    help="Sync these too (each within the parent's); ancestors gain them.",
)
@many(
    "--remove",
    metavar="REPO [REPO…]",
    help="Stop syncing these; descendants lose them too.",
)
@output_option
@no_question_option
@root_options
def permissions_update(
    manage: Management,
    name: str,
    add: tuple[str, ...],
    remove: tuple[str, ...],
    output: str,
) -> None:
    """Add or remove repositories of connected registry NAME."""
    if not add and not remove:
        raise click.UsageError("nothing to change: give --add REPO… or --remove REPO…")
    scope = manage.update_permissions(name, list(add), list(remove))
    emit(output, scope, lambda: _describe_scope_map(scope))


@cloud.command()
@click.argument("name")
@output_option
@no_question_option
@root_options
def resync(manage: Management, name: str, output: str) -> None:
    """Ask connected registry NAME's instance to reconcile every repository at its next sync
    (and drop repositories no longer in scope)."""
    found = manage.resync(name)
    emit(
        output,
        found,
        lambda: (
            f"Resync requested for {name!r}: its instance reconciles everything at its next sync."
        ),
    )
