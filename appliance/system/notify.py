"""sd_notify for `connected-registry.service` (Type=notify): READY, STATUS, STOPPING and watchdog
pings, through systemd-python.

Outside systemd (no NOTIFY_SOCKET) or without systemd-python (a development venv) every call does
nothing, silently. The frozen one-file binary runs as a child of its bootloader, so its messages
come from a PID that is not the unit's main PID: the unit needs NotifyAccess=all, and the
watchdog is honoured when WATCHDOG_PID names this process or its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

try:
    from systemd import daemon
except ImportError:  # systemd-python is the optional [systemd] extra
    daemon = None


def notify(*assignments: str) -> None:
    """Send `KEY=value` lines to systemd, if there is a systemd to hear them."""
    if daemon is None or not os.environ.get("NOTIFY_SOCKET"):
        return
    daemon.notify("\n".join(assignments))


def status(text: str) -> None:
    """What `systemctl status` shows on its Status: line."""
    notify(f"STATUS={text}")


def watchdog_interval() -> float | None:
    """Seconds between pings (half of WatchdogSec=), or None when no watchdog is asked for."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and int(pid) not in (os.getpid(), os.getppid()):
        return None
    return int(usec) / 1_000_000 / 2


async def _ping_watchdog(interval: float) -> None:
    # Pinged from the event loop: a loop stuck in blocking work misses its pings and systemd
    # restarts the service.
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running(text: str) -> AsyncIterator[None]:
    """Tell systemd the service is ready (with `text` as its status) and keep the watchdog fed
    until the block ends; then say it is stopping."""
    notify("READY=1", f"STATUS={text}")
    interval = watchdog_interval()
    pings = asyncio.create_task(_ping_watchdog(interval)) if interval else None
    try:
        yield
    finally:
        notify("STOPPING=1", "STATUS=stopping")
        if pings is not None:
            pings.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pings
