"""What went wrong in a sync run, or is worth the parent's knowing (a tag the parent won): a
`Problem`, its code and its message kept apart.

The status report upward takes the code and the message as they are (PROTOCOL.md §3), and the
CLI's line and the report's JSON show `str(problem)`, `CODE: message`; nothing parses one back.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.control.gateway_client import ParentUnreachable
from appliance.control.parent import PARENT_UNREACHABLE


@dataclass(frozen=True)
class Problem:
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def parent_unreachable(err: ParentUnreachable) -> Problem:
    """A run's error for a parent that did not answer (settings, feed or status)."""
    return Problem(PARENT_UNREACHABLE, f"cannot reach {err.endpoint}: {err.reason}")
