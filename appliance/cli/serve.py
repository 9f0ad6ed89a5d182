"""`connected-registry serve`: run the registry until stopped, and, on a node that syncs, the
sync runs `connected-registry sync` asks for over `<data_dir>/control.sock`
(registry/control_socket.py)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import sqlite3
import ssl
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import click
from aiohttp import web

from appliance import __version__
from appliance.cli.options import load, node_options
from appliance.config import Config, with_role_defaults
from appliance.control.node import CLOUD, CONNECTED
from appliance.registry import control_socket
from appliance.registry.app import make_app
from appliance.registry.context import STORE
from appliance.storage.layout import Layout
from appliance.storage.schema import SchemaTooNew
from appliance.system import logs, notify
from appliance.system.role import node_role

log = logging.getLogger(__name__)


@click.command()
@node_options
@click.option(
    "--listen",
    metavar="HOST:PORT",
    envvar="CONNECTED_REGISTRY_LISTEN",
    show_envvar=True,
    help="Where to listen.  [default: 127.0.0.1:5050, or the config's listen]",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CONNECTED_REGISTRY_TLS_CERT",
    show_envvar=True,
    help="Server certificate (PEM, chain after it).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CONNECTED_REGISTRY_TLS_KEY",
    show_envvar=True,
    help="Server certificate's private key (PEM).",
)
@click.option(
    "--auth/--no-auth",
    "auth",
    default=None,
    help="Require tokens from clients.  [default: the config's [auth] enabled, else off]",
)
@click.option(
    "--insecure-http",
    is_flag=True,
    help="Serve plain HTTP on a loopback address even with auth on or on a root or device "
    "(tests and development only).",
)
def serve(
    config_path: Path | None,
    data_dir: Path | None,
    listen: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    auth: bool | None,
    insecure_http: bool,
) -> None:
    """Run the registry: the OCI distribution API and the token endpoint on one listener.

    Plain HTTP is for loopback only: anywhere else give a certificate (`connected-registry tls
    generate` makes one), and with auth on plain HTTP also needs --insecure-http.

    On an activated device, or any node with [[upstream]]s, it also listens on
    <data_dir>/control.sock (mode 0600) and runs the syncs `connected-registry sync` asks for.
    """
    config = load(
        config_path,
        data_dir,
        listen=listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        auth_enabled=auth,
    )
    layout = Layout(config.data_dir)
    role = node_role(config.data_dir).role
    if not insecure_http:
        config = with_role_defaults(config, role, layout.tls_server_cert, layout.tls_server_key)
    elif role in ("cloud", "connected") and "auth" not in config.explicit:
        config = replace(config, auth_enabled=True)
    if role in ("cloud", "connected") and config.tls_cert is None and not insecure_http:
        raise click.ClickException(
            f"this node is a {'root' if role == 'cloud' else 'connected registry'} and has no "
            "TLS certificate: run `connected-registry tls generate --host NAME`, or give "
            "--tls-cert/--tls-key"
        )
    if config.tls_cert is None:
        if not config.listen.is_loopback:
            raise click.ClickException(
                f"plain HTTP is only served on loopback, not {config.listen.host}: give "
                "--tls-cert/--tls-key (connected-registry tls generate makes them)"
            )
        if config.auth_enabled and not insecure_http:
            raise click.ClickException(
                "auth over plain HTTP would send passwords in clear: give --tls-cert/--tls-key, "
                "or --insecure-http for a loopback test setup"
            )
    data = config.data_dir.resolve()
    made = _first_missing(data)
    try:
        with _only_server(Layout(data)):
            logs.configure(config.log_level)
            warnings = role_warnings(role, config)
            for warning in warnings:
                log.warning("%s", warning)
            # A node that syncs takes its runs over control.sock (`connected-registry sync`
            # asks it).
            syncs = role == CONNECTED or bool(config.upstreams)
            asyncio.run(_serve(config, syncs=syncs, warnings=warnings))
    except NotServing:
        # Nothing was served from it: a failed start leaves no new data directory behind.
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise


class NotServing(click.ClickException):
    """A failure before the listener was up (the data directory served nothing)."""


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what serving there creates).
    One this user cannot see counts as missing: it cannot make it either, so removes nothing."""
    missing = None
    for folder in (path, *path.parents):
        if os.path.exists(folder):
            break
        missing = folder
    return missing


@contextlib.contextmanager
def _only_server(layout: Layout) -> Iterator[None]:
    """Held while serving: one `serve` per data directory. Taken before anything is printed or
    opened; the holder writes its PID into the lock file, for the refusal of the next one.
    Closing the file (or the process ending) releases it."""
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(layout.serve_lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise click.ClickException(
            f"cannot open the data directory {layout.root}: {err.strerror or err}"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise click.ClickException(
                f"data directory {layout.root} is in use by process {holder}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def role_warnings(role: str | None, config: Config) -> list[str]:
    """What this serve runs without that a root or a device is served with (TLS and auth): an
    operator's --no-auth or --insecure-http, said in the log and in `status`."""
    if role not in (CLOUD, CONNECTED):
        return []
    node = "a root" if role == CLOUD else "an activated connected registry"
    warnings = []
    if not config.auth_enabled:
        warnings.append(
            f"auth is off on {node} (--no-auth, or [auth] enabled = false): clients need no "
            "token"
        )
    if config.tls_cert is None:
        warnings.append(
            f"plain HTTP on {node} (--insecure-http): passwords and content travel in clear; "
            "for tests and development only"
        )
    return warnings


def _tls_context(config: Config) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as err:
        raise NotServing(f"cannot load TLS certificate or key: {err}") from None
    return context


async def _serve(config: Config, syncs: bool, warnings: list[str]) -> None:
    tls = _tls_context(config)
    data_dir = config.data_dir.resolve()
    app = make_app(replace(config, data_dir=data_dir))
    access_log = logging.getLogger("aiohttp.access") if config.log_level == "debug" else None
    runner = web.AppRunner(app, access_log=access_log, handle_signals=False)
    try:
        await runner.setup()
    except SchemaTooNew as err:
        raise NotServing(str(err)) from None
    except (OSError, sqlite3.Error) as err:
        raise NotServing(f"cannot open the data directory {data_dir}: {err}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, config.listen.host, config.listen.port, ssl_context=tls)
        try:
            await site.start()
        except OSError as err:
            raise NotServing(
                f"cannot listen on {config.listen.url('tcp')}: {err.strerror or err}"
            ) from None
        url = config.listen.url("https" if tls else "http")
        click.echo(f"connected-registry {__version__} serving {url}")
        click.echo(f"data: {data_dir}")
        # Up before READY=1, so the timer's first `sync` finds it; closed (a run under way
        # stopped) before the store is.
        control = (
            control_socket.serving(app[STORE], config, warnings)
            if syncs
            else contextlib.nullcontext()
        )
        try:
            async with control, notify.running(f"serving {url}"):
                await stop.wait()
        except control_socket.ControlSocketError as err:
            raise click.ClickException(str(err)) from None
    finally:
        await runner.cleanup()
