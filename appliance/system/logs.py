"""Where log records go: the journal with structured fields under systemd, stderr otherwise.

Under systemd (stderr is the journal stream, `JOURNAL_STREAM`) and with systemd-python in the
binary, records are sent natively so an operator can filter a fleet's logs by field:

    journalctl -u 'connected-registry*' REPOSITORY=demo/app
    journalctl SYNC_RUN_ID=6f1c…            # every line of one sync run, in any process
    journalctl DIGEST=sha256:…

A record carries fields as `extra={"repository": …, "digest": …}` (`fields()` builds it); the sync
run id comes from a context variable set for the duration of a run, so every line a run logs —
in the copy, the push, the client — carries it without being passed around. On a terminal the
same fields are appended to the line as `key=value`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

try:
    from systemd.journal import JournalHandler
except ImportError:  # systemd-python is the optional [systemd] extra in development
    JournalHandler = None  # type: ignore[assignment,misc]

IDENTIFIER = "connected-registry"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(fields)s"
# record attribute → journal field (journald accepts only upper-case field names).
FIELDS = {"repository": "REPOSITORY", "digest": "DIGEST", "run_id": "SYNC_RUN_ID"}

sync_run_id: ContextVar[str | None] = ContextVar("sync_run_id", default=None)


def fields(repository: str | None = None, digest: object | None = None) -> dict[str, Any]:
    """`extra=` for a log call about a repository and/or a digest."""
    found: dict[str, Any] = {}
    if repository is not None:
        found["repository"] = repository
    if digest is not None:
        found["digest"] = str(digest)
    return found


@contextmanager
def run_context(run_id: str) -> Iterator[None]:
    """Every record logged inside carries `run_id` (SYNC_RUN_ID in the journal)."""
    token = sync_run_id.set(run_id)
    try:
        yield
    finally:
        sync_run_id.reset(token)


class _Fields(logging.Filter):
    """Copies the known fields to their journal names and renders them for text output."""

    def filter(self, record: logging.LogRecord) -> bool:
        run_id = sync_run_id.get()
        if run_id is not None and not hasattr(record, "run_id"):
            record.run_id = run_id
        text = []
        for attribute, field in FIELDS.items():
            value = getattr(record, attribute, None)
            if value is not None:
                setattr(record, field, str(value))
                text.append(f"{attribute}={value}")
        record.fields = (" " + " ".join(text)) if text else ""
        return True


def under_journal() -> bool:
    """stderr is connected to the journal (systemd sets JOURNAL_STREAM to its device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{info.st_dev}" == device and f"{info.st_ino}" == inode


def configure(level: str, terminal_level: str | None = None) -> None:
    """One handler on the root logger, at `level` (a config log level: debug, info, …).
    `terminal_level`, when given, is the least a record needs to reach stderr when it is not
    the journal: a command whose report already says everything keeps its output to that, while
    under systemd the journal still gets every line at `level` (or the parent's log level)."""
    handler: logging.Handler
    if JournalHandler is not None and under_journal():
        handler = JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        if terminal_level is not None:
            handler.setLevel(terminal_level.upper())
    handler.addFilter(_Fields())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
