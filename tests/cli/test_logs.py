"""Log records carry structured fields (repository, digest, sync run id): as journal fields
under systemd (checked on a real journal by the boot test), as `key=value` on a terminal."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from appliance.system import logs


@pytest.fixture
def configured(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """The root logger as `configure` leaves it, put back afterwards. Tests call `configure`
    themselves: the handler binds the stderr of the test's own capture phase."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield capsys
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def test_fields_and_the_run_id_are_on_the_line(configured: pytest.CaptureFixture[str]) -> None:
    logs.configure("info")
    log = logging.getLogger("appliance.sync.test")
    digest = "sha256:" + "ab" * 32
    with logs.run_context("run-1234"):
        log.info("copied", extra=logs.fields(repository="demo/app", digest=digest))
        log.info("plain")
    log.info("after the run")
    err = configured.readouterr().err
    lines = err.splitlines()
    assert lines[0].endswith(f"copied repository=demo/app digest={digest} run_id=run-1234"), err
    assert lines[1].endswith("plain run_id=run-1234")
    assert lines[2].endswith("after the run")


def test_records_carry_the_journal_field_names(configured: pytest.CaptureFixture[str]) -> None:
    logs.configure("info")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    for handler in logging.getLogger().handlers:
        for found in handler.filters:
            keep.addFilter(found)
    logging.getLogger().addHandler(keep)
    with logs.run_context("r1"):
        logging.getLogger("appliance").warning("x", extra=logs.fields(repository="demo/app"))
    assert seen[0].REPOSITORY == "demo/app"  # type: ignore[attr-defined]
    assert seen[0].SYNC_RUN_ID == "r1"  # type: ignore[attr-defined]
    assert not hasattr(seen[0], "DIGEST")


def test_a_terminal_is_not_the_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert logs.under_journal() is False
