"""Sync schedules (cron, UTC), windows and message TTLs, as ACR writes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import isodate

CONTINUOUS = "* * * * *"
MIN_WINDOW, MAX_WINDOW = timedelta(hours=1), timedelta(days=7)
MIN_TTL, MAX_TTL = timedelta(days=1), timedelta(days=90)
DEFAULT_TTL = "P2D"


class ScheduleError(ValueError):
    pass


def parse_duration(text: str, what: str) -> timedelta:
    try:
        duration = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError):
        raise ScheduleError(
            f"{what} {text!r} is not an ISO 8601 duration like PT4H or P2D"
        ) from None
    if not isinstance(duration, timedelta):
        raise ScheduleError(f"{what} {text!r}: use days, hours and minutes, not months or years")
    return duration


def validate_schedule(schedule: str, window: str | None) -> None:
    # croniter is imported where it is used (control/cron.py says why).
    from appliance.control.cron import croniter

    if not croniter.is_valid(schedule) or len(schedule.split()) != 5:
        raise ScheduleError(
            f"sync schedule {schedule!r} is not a 5-field cron expression (UTC), e.g. '0 12 * * *'"
        )
    if schedule != CONTINUOUS and window is None:
        raise ScheduleError("a sync schedule other than '* * * * *' needs a --sync-window")
    if window is not None:
        duration = parse_duration(window, "sync window")
        if not MIN_WINDOW <= duration <= MAX_WINDOW:
            raise ScheduleError(f"sync window {window!r} must be from PT1H to P7D")


def validate_ttl(ttl: str) -> None:
    duration = parse_duration(ttl, "message TTL")
    if not MIN_TTL <= duration <= MAX_TTL:
        raise ScheduleError(f"message TTL {ttl!r} must be from P1D to P90D")


def interval(schedule: str, now: datetime | None = None) -> timedelta:
    """The time between two occurrences of the schedule around `now`."""
    from appliance.control.cron import croniter

    moment = now or datetime.now(UTC)
    it = croniter(schedule, moment)
    following = it.get_next(datetime)
    return it.get_next(datetime) - following
