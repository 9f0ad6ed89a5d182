"""First boot of a device: activate it from the connection string the imaging pipeline dropped,
or ask the person at the console (tty1).

Run by `connected-registry-firstboot.service` as root, only on a node that is neither activated
nor a root. `activate` itself hands the data directory to the service user and starts the
service and the sync timer.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import termios
from pathlib import Path

CONNECTION_STRING_FILE = Path("/etc/connected-registry/connection-string")
CONSOLE = Path("/dev/tty1")


def _self() -> list[str]:
    """How to run this same program again: the frozen binary, or the package's module."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "appliance"]


def activate_from_file(path: Path, node_args: list[str]) -> int:
    """Activate unattended from `path`; delete it once the node is activated (it holds the
    sync token's password). Returns activate's exit code."""
    command = [*_self(), "activate", *node_args, "--connection-string-file", str(path), "--yes"]
    code = subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode
    if code == 0:
        path.unlink(missing_ok=True)
    return code


def _take_console() -> None:
    """In the child, before exec: make the console (already its stdin) the controlling
    terminal of a new session, so Ctrl-C and the prompts behave as at a login."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 1)


def activate_on_console(console: Path, node_args: list[str]) -> int:
    """Run the activation wizard once on `console`; returns its exit code (the unit restarts
    it after a failure)."""
    fd = os.open(console, os.O_RDWR | os.O_NOCTTY)
    try:
        return subprocess.run(
            [*_self(), "activate", *node_args],
            stdin=fd,
            stdout=fd,
            stderr=fd,
            preexec_fn=_take_console,  # safe: no threads run in this process
            check=False,
        ).returncode
    finally:
        os.close(fd)
