"""Cron schedules (UTC) and sync windows, evaluated with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from appliance.control.schedule import ScheduleError
from appliance.sync.schedule import Deadline, Window, last_occurrence, window_at


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_the_continuous_default_is_always_open() -> None:
    for moment in ("2024-01-01T00:00:00", "2024-06-30T13:37:59"):
        assert window_at("* * * * *", None, at(moment)) == Window(open=True)
    assert window_at(None, None, at("2024-01-01T00:00:00")).open


def test_a_window_across_midnight_is_open_after_midnight() -> None:
    found = window_at("0 23 * * *", "PT2H", at("2024-03-10T00:30:00"))
    assert found.open
    assert found.closes_at == at("2024-03-10T01:00:00")


def test_outside_the_window_it_is_closed_and_says_when_it_opens() -> None:
    found = window_at("0 23 * * *", "PT2H", at("2024-03-10T01:30:00"))
    assert not found.open
    assert found.opens_at == at("2024-03-10T23:00:00")
    before = window_at("0 23 * * *", "PT2H", at("2024-03-10T22:59:59"))
    assert not before.open
    assert before.opens_at == at("2024-03-10T23:00:00")


def test_the_start_is_inside_and_the_end_is_outside() -> None:
    assert window_at("0 23 * * *", "PT2H", at("2024-03-10T23:00:00")).open
    assert window_at("0 23 * * *", "PT2H", at("2024-03-11T00:59:59.999999")).open
    end = window_at("0 23 * * *", "PT2H", at("2024-03-11T01:00:00"))
    assert not end.open
    assert end.opens_at == at("2024-03-11T23:00:00")


def test_a_weekly_schedule() -> None:
    # Sundays 02:00 UTC for six hours; 2024-03-10 is a Sunday.
    schedule, window = "0 2 * * 0", "PT6H"
    assert window_at(schedule, window, at("2024-03-10T07:59:00")).open
    closed = window_at(schedule, window, at("2024-03-13T12:00:00"))
    assert not closed.open
    assert closed.opens_at == at("2024-03-17T02:00:00")
    assert last_occurrence(schedule, at("2024-03-16T23:59:00")) == at("2024-03-10T02:00:00")


def test_a_multi_day_window_spans_the_week() -> None:
    found = window_at("0 0 * * 1", "P2D", at("2024-03-12T23:00:00"))  # Monday 00:00 + 2 days
    assert found.open
    assert found.closes_at == at("2024-03-13T00:00:00")


def test_utc_has_no_dst_jump() -> None:
    # 2024-03-31 is the EU switch to summer time; in UTC 02:30 exists and is an occurrence.
    assert window_at("30 2 * * *", "PT1H", at("2024-03-31T02:30:00")).open
    assert last_occurrence("30 2 * * *", at("2024-03-31T03:00:00")) == at("2024-03-31T02:30:00")


def test_an_aware_non_utc_now_is_converted() -> None:
    plus_two = datetime(2024, 3, 10, 2, 30, tzinfo=timezone(timedelta(hours=2)))
    assert window_at("0 23 * * *", "PT4H", plus_two).open  # 00:30 UTC


def test_a_damaged_schedule_is_refused() -> None:
    with pytest.raises(ScheduleError):
        window_at("not cron", "PT1H", at("2024-01-01T00:00:00"))


def test_the_deadline_follows_the_injected_clock() -> None:
    now = [at("2024-03-10T00:59:00")]
    deadline = Deadline(at("2024-03-10T01:00:00"), lambda: now[0])
    assert not deadline.passed()
    now[0] = at("2024-03-10T01:00:00")
    assert deadline.passed()
    assert not Deadline(None, lambda: now[0]).passed()
