"""Options every command that acts on a node shares (DESIGN.md §7), and config loading."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from appliance.config import Config, ConfigError, resolve
from appliance.storage.layout import Layout

if TYPE_CHECKING:
    from appliance.auth.tokens import Credentials
    from appliance.storage.store import Store

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CONNECTED_REGISTRY_CONFIG",
    show_envvar=True,
    help="Config file (TOML).  [default: /etc/connected-registry/config.toml if it exists]",
)
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CONNECTED_REGISTRY_DATA_DIR",
    show_envvar=True,
    help="State directory.  [default: the config's data_dir, else ./connected-registry-data]",
)


def node_options(f: Callable[..., Any]) -> Callable[..., Any]:
    return config_option(data_dir_option(f))


class ConfigUsageError(click.UsageError):
    """A config problem: exit code 2, one line."""


def load(config_path: Path | None, data_dir: Path | None, **overrides: Any) -> Config:
    try:
        return resolve(config_path, data_dir, **overrides)
    except ConfigError as err:
        raise ConfigUsageError(str(err)) from None


def act_as_owner(data_dir: Path) -> None:
    """Run by root on a node whose data directory belongs to another user (the service user of
    a packaged root or device), run the command again as that user: a `sudo connected-registry
    cloud init`, `token create` or in-process `sync` must not leave a root-owned database, key
    or blob folder that the service can no longer open or write. Nothing changes for anyone
    else, nor for a data directory root owns (or that does not exist yet: whoever makes it
    owns it).

    A new process rather than setuid in this one: the one-file binary unpacks its libraries
    into a folder only root may read, so this process, once it were another user, could not
    load what it has not loaded yet. The command has written nothing at this point."""
    if os.geteuid() != 0:
        return
    try:
        owner = data_dir.stat()
    except OSError:
        return
    if owner.st_uid == 0:
        return
    env = dict(os.environ)
    if getattr(sys, "frozen", False):
        argv = [sys.executable, *sys.argv[1:]]
        # A fresh instance that unpacks its own copy, not a child of this one's folder.
        env["PYINSTALLER_RESET_ENVIRONMENT"] = "1"
        original = env.pop("LD_LIBRARY_PATH_ORIG", None)
        env.pop("LD_LIBRARY_PATH", None)
        if original is not None:
            env["LD_LIBRARY_PATH"] = original
    else:
        argv = [sys.executable, "-m", "appliance", *sys.argv[1:]]
    try:
        os.setgroups([])
        os.setgid(owner.st_gid)
        os.setuid(owner.st_uid)
    except OSError as err:
        raise click.ClickException(
            f"cannot act as the owner (uid {owner.st_uid}) of {data_dir}: {err}"
        ) from None
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


def existing_registry(config: Config) -> Layout:
    """The layout of the registry in the config's data directory, or one line and exit 1 when
    there is none there: a command that reads or acts on a registry never makes one (a mistyped
    --data-dir must not become a new, empty registry)."""
    layout = Layout(config.data_dir.resolve())
    try:
        layout.database.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise click.ClickException(
            f"no registry in {layout.root}: run `connected-registry serve`, `activate` or "
            "`cloud init` first, or give --data-dir"
        ) from None
    except OSError:
        pass  # there, but not for this user: what opening it says next is more precise
    return layout


def open_store(config: Config, create: bool = False) -> Store:
    """The node's store, for commands that work on the data directory directly (the running
    service may have it open too: SQLite in WAL mode takes both). Run by root, as the data
    directory's owner (`act_as_owner`). Only with `create` (the commands that set a node up)
    is a registry made where there is none; otherwise that is refused (`existing_registry`)."""
    # Imported here: every command loads this module, and `system check-role` (every minute,
    # from the sync unit) needs neither the store nor sqlite_utils.
    from appliance.storage.schema import SchemaTooNew
    from appliance.storage.store import Store

    if not create:
        existing_registry(config)
    act_as_owner(config.data_dir)
    try:
        return Store(config.data_dir)
    except SchemaTooNew as err:
        raise click.ClickException(str(err)) from None
    except (OSError, sqlite3.Error) as err:
        raise click.ClickException(
            f"cannot open the data directory {config.data_dir}: {err}"
        ) from None


def open_credentials(config: Config, create: bool = False) -> Credentials:
    """Tokens and scope maps of the node, with the config's limits (`create` as for
    `open_store`)."""
    from appliance.auth.tokens import Credentials

    store = open_store(config, create)
    return Credentials(
        store.db,
        max_tokens=config.limits.tokens,
        max_scope_maps=config.limits.scope_maps,
        max_permissions=config.limits.repository_permissions,
    )
