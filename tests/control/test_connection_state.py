"""A connected registry's connection state as its parent shows it (PROTOCOL.md §6), on a clock
the test sets: Offline once it has not been heard from for `offline_after`, with no waiting."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from appliance.control.hierarchy import MIN_OFFLINE_AFTER, ConnectedRegistry, connection_state

HEARD_AT = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
EDGE = ConnectedRegistry(
    name="edge01", mode="ReadOnly", parent=None, repositories=("demo/*",), client_tokens=(),
    sync_schedule="* * * * *", sync_window=None, message_ttl="P7D", log_level="info",
    sync_token="edge01", activation_status="Active", created_at=HEARD_AT.isoformat(),
    updated_at=HEARD_AT.isoformat(), last_activity_time=HEARD_AT.isoformat(),
)


@pytest.mark.parametrize(
    ("silent_for", "state"),
    [(timedelta(0), "Online"), (timedelta(seconds=2), "Online"), (timedelta(seconds=3), "Offline")],
)
def test_offline_once_silent_for_longer_than_offline_after(
    silent_for: timedelta, state: str
) -> None:
    # 2.5 s: between two whole-second stamps, as the root writes them.
    assert connection_state(EDGE, HEARD_AT + silent_for, timedelta(seconds=2.5)) == state


def test_without_offline_after_a_minutely_registry_has_the_floor() -> None:
    just_inside = HEARD_AT + MIN_OFFLINE_AFTER
    assert connection_state(EDGE, just_inside, None) == "Online"
    assert connection_state(EDGE, just_inside + timedelta(seconds=1), None) == "Offline"


def test_a_registry_never_heard_from_or_inactive_is_offline() -> None:
    never_heard = dataclasses.replace(EDGE, last_activity_time=None)
    inactive = dataclasses.replace(EDGE, activation_status="Inactive")
    assert connection_state(never_heard, HEARD_AT, None) == "Offline"
    assert connection_state(inactive, HEARD_AT, None) == "Offline"


def test_errors_make_it_unhealthy_and_a_sync_shows_until_it_goes_quiet() -> None:
    failing = dataclasses.replace(EDGE, status_details=({"type": "sync", "code": "X"},))
    assert connection_state(failing, HEARD_AT, None) == "Unhealthy"
    syncing = dataclasses.replace(EDGE, reported_state="Syncing")
    assert connection_state(syncing, HEARD_AT, None) == "Syncing"
    assert connection_state(syncing, HEARD_AT + timedelta(hours=1), None) == "Offline"
