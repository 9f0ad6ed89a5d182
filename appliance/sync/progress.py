"""How far the sync run under way has got: one `Progress` per run, under its run id.

The run (run.py) puts its `Progress` in a contextvar for its duration, so the copy engine
(copy.py) reports bytes, blobs and manifests to `current_progress()` without being handed it;
tasks the run starts (blobs fetched in parallel) inherit it. Outside a run `current_progress()`
is an untracked `Progress` nobody reads, so the same code serves on-demand fetches without
reporting anything.

Whoever shows the progress (`connected-registry sync`'s display, the service's control socket)
reads `to_json()` and may `listen()` for changes: the listener is called, in the event loop,
with the kind of change — `repository` (a repository started), `phase`, `bytes`, `blob`,
`manifest`, `finished` — and must be cheap (it runs for every chunk received).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# The rate is measured over the last RATE_WINDOW seconds, from samples at most SAMPLE_EVERY
# apart: steady enough to read, recent enough to show a link that slowed down.
RATE_WINDOW = 10.0
SAMPLE_EVERY = 0.5

Listener = Callable[[str], None]


class Progress:
    """The live figures of one sync run. Every figure only grows during the run."""

    def __init__(self, dry_run: bool = False, run_id: str | None = None) -> None:
        self.run_id = run_id or str(uuid.uuid4())
        self.dry_run = dry_run
        self.started_at = datetime.now(UTC)
        self.finished_at: datetime | None = None
        # settings (the parent's), pushing (the outbox), pulling; starting before, finished after.
        self.phase = "starting"
        self.source: str | None = None
        self.repository: str | None = None
        self.repositories_done = 0
        # Summed over the sources as their scope is listed; None until one is.
        self.repositories_total: int | None = None
        self.manifests = 0
        self.blobs = 0
        self.bytes = 0
        # Blobs being downloaded now, by digest, with the size their descriptor gives.
        self._under_way: dict[str, int] = {}
        self._started = time.monotonic()
        # Bounded: a sample older than the window is never read again.
        self._samples: deque[tuple[float, int]] = deque(
            [(self._started, 0)], maxlen=int(RATE_WINDOW / SAMPLE_EVERY) + 2
        )
        self._listeners: list[Listener] = []

    # -- what the run reports -----------------------------------------------------------------

    def set_phase(self, phase: str, source: str | None = None) -> None:
        self.phase = phase
        if source is not None:
            self.source = source
        self._changed("phase")

    def repositories_found(self, count: int) -> None:
        self.repositories_total = (self.repositories_total or 0) + count

    def repository_started(self, name: str) -> None:
        self.repository = name
        self._changed("repository")

    def repository_finished(self) -> None:
        self.repositories_done += 1

    def manifest_copied(self) -> None:
        self.manifests += 1
        self._changed("manifest")

    def blob_started(self, digest: str, size: int) -> None:
        self._under_way[digest] = size
        self._changed("blob")

    def blob_ended(self, digest: str) -> None:
        """The download of `digest` ended, copied or not (`blob_copied` says it was)."""
        self._under_way.pop(digest, None)

    def blob_copied(self) -> None:
        self.blobs += 1
        self._changed("blob")

    def bytes_received(self, count: int) -> None:
        self.bytes += count
        self._sample(time.monotonic())
        self._changed("bytes")

    def finish(self) -> None:
        self.phase = "finished"
        self.repository = None
        self.finished_at = datetime.now(UTC)
        self._changed("finished")

    # -- what readers see ---------------------------------------------------------------------

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(kind)` on every change until the returned function is called."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def rate(self) -> float:
        """Bytes per second over the last RATE_WINDOW seconds (0 when nothing is moving)."""
        now = time.monotonic()
        self._sample(now)
        while len(self._samples) > 1 and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()
        since, before = self._samples[0]
        return (self.bytes - before) / (now - since) if now > since else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "dryRun": self.dry_run,
            "startedAt": _stamp(self.started_at),
            "seconds": round(time.monotonic() - self._started, 1),
            "phase": self.phase,
            "source": self.source,
            "repository": self.repository,
            "repositoriesDone": self.repositories_done,
            "repositoriesTotal": self.repositories_total,
            "manifests": self.manifests,
            "blobs": self.blobs,
            "bytes": self.bytes,
            "blobsUnderWay": len(self._under_way),
            "bytesUnderWay": sum(self._under_way.values()),
            "bytesPerSecond": round(self.rate()),
        }

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        """What `status` shows of the last run: when, how long, what moved, its errors
        (`report` is the run's `SyncReport.to_json()`)."""
        errors = [error for source in report["sources"] for error in source["errors"]]
        total = report["total"]
        return {
            "runId": self.run_id,
            "startedAt": _stamp(self.started_at),
            "finishedAt": _stamp(self.finished_at or datetime.now(UTC)),
            "seconds": report["seconds"],
            "repositories": total["repositories"],
            "manifests": total["manifests"],
            "blobs": total["blobs"],
            "bytes": total["bytes"],
            "errors": len(errors),
            "firstError": errors[0] if errors else None,
            "windowClosedDuringRun": report["windowClosedDuringRun"],
        }

    def _sample(self, now: float) -> None:
        if now - self._samples[-1][0] >= SAMPLE_EVERY:
            self._samples.append((now, self.bytes))

    def _changed(self, kind: str) -> None:
        for listener in list(self._listeners):
            listener(kind)


# An untracked Progress for copies outside a run (on-demand fetches): counted, never read.
_UNTRACKED = Progress(run_id="")
_CURRENT: ContextVar[Progress] = ContextVar("sync_progress", default=_UNTRACKED)


def current_progress() -> Progress:
    """The Progress of the run this code is part of (or the untracked one outside a run)."""
    return _CURRENT.get()


@contextmanager
def tracking(progress: Progress) -> Iterator[Progress]:
    """Make `progress` the current one for the block (and the tasks started in it)."""
    token = _CURRENT.set(progress)
    try:
        yield progress
    finally:
        _CURRENT.reset(token)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
