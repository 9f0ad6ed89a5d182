"""Options every command that acts on a node shares (DESIGN.md §7), and config loading."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from appliance.auth.tokens import Credentials
from appliance.config import Config, ConfigError, resolve
from appliance.storage.schema import SchemaTooNew
from appliance.storage.store import Store

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CONNECTED_REGISTRY_CONFIG",
    help="Config file (TOML).  [default: /etc/connected-registry/config.toml if it exists]",
)
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CONNECTED_REGISTRY_DATA_DIR",
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


def open_store(config: Config) -> Store:
    """The node's store, for commands that work on the data directory directly (the running
    service may have it open too: SQLite in WAL mode takes both)."""
    try:
        return Store(config.data_dir)
    except SchemaTooNew as err:
        raise click.ClickException(str(err)) from None
    except (OSError, sqlite3.Error) as err:
        raise click.ClickException(
            f"cannot open the data directory {config.data_dir}: {err}"
        ) from None


def open_credentials(config: Config) -> Credentials:
    """Tokens and scope maps of the node, with the config's limits."""
    store = open_store(config)
    return Credentials(
        store.db,
        max_tokens=config.limits.tokens,
        max_scope_maps=config.limits.scope_maps,
        max_permissions=config.limits.repository_permissions,
    )
