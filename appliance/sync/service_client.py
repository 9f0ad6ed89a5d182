"""How `connected-registry sync` and `status` on this machine reach the running service: the
client of its control socket, `<data_dir>/control.sock` (the server and its API are
registry/control_socket.py). With no service answering, the command does the work itself.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from appliance.sync.lock import AlreadyRunning
from appliance.sync.sources import SyncError

NDJSON = "application/x-ndjson"
# Seconds between events of a quiet run: the client takes HEARTBEAT * 12 of silence as a
# service that stopped answering.
HEARTBEAT = 5.0
STATUS_TIMEOUT = 2.0
# sun_path holds 108 bytes, its NUL included: a longer path cannot be bound or connected to.
MAX_SOCKET_PATH = 107
ALREADY_RUNNING = "ALREADY_RUNNING"
SERVICE_STOPPED = "SERVICE_STOPPED"
# The host part of the URLs: any name does over a UNIX socket; this one says where it goes.
BASE = "http://control.sock"


class ServiceUnavailable(Exception):
    """No service answers on the socket (none runs, or it died): the command does the work."""


class ControlError(Exception):
    """The service is there but cannot be used or followed; one line for the operator."""


async def follow_sync(
    path: Path, dry_run: bool, on_event: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Ask the service listening on `path` to sync, calling `on_event` with each `started`,
    `progress` and `repository` event, and return the run's report (SyncReport JSON).

    ServiceUnavailable when no service answers (the caller syncs in-process); AlreadyRunning
    and SyncError as `run_sync` and its lock would raise them; ControlError when this user may
    not use the socket or the service stopped before the run's end."""
    connector = _connector(path)
    # No total: a run may take an hour. A service silent for a minute is gone.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=HEARTBEAT * 12)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        try:
            response = await session.post(f"{BASE}/sync", json={"dryRun": dry_run})
        except aiohttp.ClientConnectorError as err:
            raise _unreachable(path, err.os_error) from None
        except (aiohttp.ClientError, TimeoutError) as err:
            raise _stopped(f"the service did not answer on {path}: {err}") from None
        async with response:
            if response.status != 200:
                raise ControlError(f"the service refused the sync request ({response.status})")
            try:
                async for event in _events(response):
                    if event.get("event") in ("started", "progress", "repository"):
                        on_event(event)
                    else:
                        return _final(event)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
    raise _stopped("the service stopped during the sync")


async def live_status(path: Path) -> dict[str, Any] | None:
    """The service's `GET /status`, or None when no service answers (or may not be asked)."""
    try:
        connector = _connector(path)
    except (ServiceUnavailable, ControlError):
        return None
    timeout = aiohttp.ClientTimeout(total=STATUS_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(f"{BASE}/status") as response,
        ):
            document = await response.json() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _connector(path: Path) -> aiohttp.UnixConnector:
    """A connector to `path`, once the socket is known to exist and be reachable by name."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ServiceUnavailable()
    try:
        os.stat(path)
    except FileNotFoundError:
        raise ServiceUnavailable() from None
    except OSError as err:
        raise _unreachable(path, err) from None
    return aiohttp.UnixConnector(path=str(path))


def _unreachable(path: Path, err: OSError) -> Exception:
    if err.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
        return ServiceUnavailable()  # a socket left by a service that died
    if err.errno in (errno.EACCES, errno.EPERM):
        return ControlError(
            f"permission denied on the service's control socket {path}: run this as the "
            "service's user (sudo -u connected-registry …) or as root"
        )
    return ControlError(f"cannot reach the service's control socket {path}: {err.strerror}")


def _stopped(reason: str) -> ControlError:
    return ControlError(f"{reason}; see its log (journalctl -u connected-registry)")


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The NDJSON events of `response`, however long a line (a report can be large)."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                event = json.loads(line)
                if isinstance(event, dict):
                    yield event


def _final(event: dict[str, Any]) -> dict[str, Any]:
    kind = event.get("event")
    if kind == "report" and isinstance(event.get("report"), dict):
        return event["report"]
    if kind == "refused":
        raise AlreadyRunning()
    if kind == "error" and event.get("code") == SERVICE_STOPPED:
        raise _stopped("the service stopped during the sync")
    if kind == "error":
        raise SyncError(str(event.get("code") or "UNKNOWN"), str(event.get("message") or event))
    raise ControlError(f"the service answered an unknown event: {kind!r}")
