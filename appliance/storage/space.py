"""A full disk: one refusal, whichever write finds it.

ENOSPC or EDQUOT from a file write (an upload's bytes, a blob's move into place) and SQLite's
SQLITE_FULL (the database or its write-ahead log cannot grow) all become `DiskFull`: HTTP 507 with
code DENIED, which a client prints and a sync reports. The write that hit it is undone (SQLite
rolls its transaction back; `finish_upload` withdraws a blob file it placed), so nothing half
written stays and the next write succeeds as soon as there is room again. SQLite reports EDQUOT
as a plain I/O error, indistinguishable from a failing disk, so that one stays an error.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from collections.abc import Iterator

from appliance.oci.errors import ErrorCode, OCIError

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
INSUFFICIENT_STORAGE = 507


class DiskFull(OCIError):
    """The data directory's disk has no room for this write; nothing of it was stored."""

    def __init__(self) -> None:
        super().__init__(
            ErrorCode.DENIED,
            "the registry's disk is full: nothing was stored; retry once space is freed",
            status=INSUFFICIENT_STORAGE,
        )


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in _FULL_ERRNOS
    if isinstance(error, sqlite3.Error):
        # The primary code: extended codes keep it in the low byte.
        return (getattr(error, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    return False


@contextlib.contextmanager
def refused_when_full() -> Iterator[None]:
    """Raise `DiskFull` for a full disk met in the block; other errors pass unchanged."""
    try:
        yield
    except (OSError, sqlite3.Error) as error:
        if is_disk_full(error):
            raise DiskFull() from error
        raise
