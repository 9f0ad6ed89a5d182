"""When a device may sync: the cron schedule (UTC) and window its parent sent (DESIGN.md §2).

Pure functions of the schedule, the window and an injected `now`, so tests (and the run) decide
the time. A window is the half-open span [occurrence, occurrence + window): a run is allowed at
`now` iff the schedule is the continuous default `* * * * *`, or the most recent occurrence at
or before `now` is less than `window` ago. The end is exclusive so that a window of exactly the
schedule's interval hands over to the next occurrence without both being open at once.

Cron is evaluated in UTC only: there is no DST jump to skip or repeat an occurrence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from appliance.control.schedule import CONTINUOUS, ScheduleError, parse_duration

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Window:
    """Whether a run may move content at `now`, and the instants around it."""

    open: bool
    # When the current window ends (None: continuous, it never does).
    closes_at: datetime | None = None
    # When the next window starts (only when closed).
    opens_at: datetime | None = None


def _utc(moment: datetime) -> datetime:
    # A naive datetime is taken as UTC: the schedule is UTC by definition.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def last_occurrence(schedule: str, now: datetime) -> datetime:
    """The most recent occurrence at or before `now` (croniter's get_prev is strictly before,
    so it starts from the next whole minute)."""
    from appliance.control.cron import croniter

    start = _utc(now).replace(second=0, microsecond=0) + timedelta(minutes=1)
    return _utc(croniter(schedule, start).get_prev(datetime))


def next_occurrence(schedule: str, now: datetime) -> datetime:
    """The first occurrence strictly after `now`."""
    from appliance.control.cron import croniter

    return _utc(croniter(schedule, _utc(now)).get_next(datetime))


def window_at(schedule: str | None, window: str | None, now: datetime) -> Window:
    """The window in force at `now`. ScheduleError for a schedule or window that cannot be
    evaluated (the root validates both, so this means a damaged settings cache)."""
    now = _utc(now)
    if not schedule or schedule.strip() == CONTINUOUS:
        return Window(open=True)
    # Here, not at the top: the continuous default, the usual idle run, never needs croniter.
    from appliance.control.cron import croniter

    if not croniter.is_valid(schedule) or len(schedule.split()) != 5:
        raise ScheduleError(f"sync schedule {schedule!r} is not a 5-field cron expression")
    # The root refuses a schedule without a window; should one arrive anyway, the occurrence's
    # minute is the closest meaning.
    length = timedelta(minutes=1) if window is None else parse_duration(window, "sync window")
    started = last_occurrence(schedule, now)
    closes_at = started + length
    if now < closes_at:
        return Window(open=True, closes_at=closes_at)
    return Window(open=False, opens_at=next_occurrence(schedule, now))


class Deadline:
    """The end of the window a run started in, checked by the copy loop between repositories
    and manifests and at every chunk of a blob: a blob cut short keeps its bytes on disk and the
    next window resumes it with `Range`."""

    def __init__(self, closes_at: datetime | None, clock: Clock = utc_now) -> None:
        self.closes_at = closes_at
        self._clock = clock

    def passed(self) -> bool:
        return self.closes_at is not None and _utc(self._clock()) >= self.closes_at


NO_DEADLINE = Deadline(None)
