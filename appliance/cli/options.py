"""Options every command that acts on a node shares (DESIGN.md §7), and config loading."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from appliance.config import Config, ConfigError, resolve

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


def load(config_path: Path | None, data_dir: Path | None, listen: str | None = None) -> Config:
    try:
        return resolve(config_path, data_dir, listen)
    except ConfigError as err:
        raise ConfigUsageError(str(err)) from None
