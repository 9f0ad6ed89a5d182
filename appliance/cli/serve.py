"""`connected-registry serve`: run the registry until stopped."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import ssl
from collections.abc import Callable
from pathlib import Path

import click
from aiohttp import web

from appliance import __version__
from appliance.cli.options import load, node_options
from appliance.config import Config
from appliance.registry.app import make_app
from appliance.storage.schema import SchemaTooNew


@click.command()
@node_options
@click.option(
    "--listen",
    envvar="CONNECTED_REGISTRY_LISTEN",
    help="HOST:PORT to listen on.  [default: 127.0.0.1:5050, or the config's listen]",
)
def serve(config_path: Path | None, data_dir: Path | None, listen: str | None) -> None:
    """Run the registry: the OCI distribution API on one listener."""
    config = load(config_path, data_dir, listen)
    if config.auth_enabled:
        raise click.ClickException("[auth] enabled = true is not supported by this release yet")
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(config))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    # uvloop roughly doubles aiohttp's request rate; the stock loop still works without it.
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _tls_context(config: Config) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as err:
        raise click.ClickException(f"cannot load TLS certificate or key: {err}") from None
    return context


async def _serve(config: Config) -> None:
    tls = _tls_context(config)
    data_dir = config.data_dir.resolve()
    app = make_app(data_dir)
    access_log = logging.getLogger("aiohttp.access") if config.log_level == "debug" else None
    runner = web.AppRunner(app, access_log=access_log, handle_signals=False)
    try:
        await runner.setup()
    except SchemaTooNew as err:
        raise click.ClickException(str(err)) from None
    except (OSError, sqlite3.Error) as err:
        raise click.ClickException(f"cannot open the data directory {data_dir}: {err}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, config.listen.host, config.listen.port, ssl_context=tls)
        try:
            await site.start()
        except OSError as err:
            raise click.ClickException(
                f"cannot listen on {config.listen.url('tcp')}: {err.strerror or err}"
            ) from None
        url = config.listen.url("https" if tls else "http")
        click.echo(f"connected-registry {__version__} serving {url}")
        click.echo(f"data: {data_dir}")
        await stop.wait()
    finally:
        await runner.cleanup()
