"""What every `cloud` verb but `init` shares: reaching the root (this node's data directory, or
`--registry URL`'s management API), the options that reach it again, confirmation, and ACR's
multi-value flags."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from appliance.auth.tokens import Credentials
from appliance.cli.options import load, node_options, open_store
from appliance.cli.output import CredentialGroup
from appliance.config import Config
from appliance.control.hierarchy import Hierarchy, HierarchyError, offline_after_from
from appliance.control.management_client import LocalManagement, Management, RemoteManagement
from appliance.control.node import CLOUD, NodeState
from appliance.control.root import ADMIN
from appliance.storage.store import Store

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


many = functools.partial(click.option, cls=ManyValues)


# -- reaching the root ---------------------------------------------------------------------------


def credentials(store: Store, config: Config) -> Credentials:
    # On the store's own connection: Hierarchy's transactions contain the token writes, and a
    # second connection would wait on the first's write lock.
    return Credentials(
        store.db,
        max_tokens=config.limits.tokens,
        max_scope_maps=config.limits.scope_maps,
        max_permissions=config.limits.repository_permissions,
    )


def management(
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
        credentials(store, config),
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
        manage = management(config_path, data_dir, registry, username, password, ca_file)
        click.get_current_context().meta[ROOT_ARGS] = root_args(
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


def root_args(
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


def confirm(question: str, yes: bool) -> None:
    """Go on with `--yes`, or when a person at a terminal says yes."""
    if yes:
        return
    if not click.get_text_stream("stdin").isatty():
        raise click.ClickException(
            "refusing to go on without confirmation and no terminal to ask on: pass --yes"
        )
    click.confirm(question, abort=True)

