"""croniter, the one judge of cron expressions, for the modules that import it on first use.

croniter's import asks `platform.architecture()` whether Python is 32-bit, and that runs `file -b
<sys.executable>` in a child process: a fork and exec in every `connected-registry sync` on a
device with a sync window, which the timer starts every minute. The answer cannot change
croniter's: it looks at the pointer size first and at sys.maxsize last, and either already tells
a 32-bit interpreter. So its import here gets the pointer size's answer, the one
`platform.architecture()` itself gives on Linux when `file` is not installed.
"""

from __future__ import annotations

import platform
import struct


def _architecture_by_pointer_size(
    executable: str = "", bits: str = "", linkage: str = ""
) -> tuple[str, str]:
    return bits or f"{struct.calcsize('P') * 8}bit", linkage


_architecture = platform.architecture
platform.architecture = _architecture_by_pointer_size
try:
    from croniter import croniter
finally:
    platform.architecture = _architecture

__all__ = ["croniter"]
