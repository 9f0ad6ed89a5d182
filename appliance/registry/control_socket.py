"""The running service's local control socket, `<data_dir>/control.sock` (DESIGN.md §7): how
`connected-registry sync` and `status` on the same machine reach the service, so that one
process owns the store, the on-demand fetches and the progress of a sync run.

A small HTTP API over the UNIX socket, apart from the registry's listener (none of the
registry's auth applies). The socket's mode is its access control: 0600, owned by the service
user, so that user and root can connect and nobody else can.

    POST /sync    body {"dryRun": bool}; 200, `application/x-ndjson`, one event a line:
                    {"event": "started", "runId", "joined", "progress"}
                    {"event": "progress" | "repository", "progress"}   a `repository` event as
                        soon as one starts, others at most 4 a second, and at least one every
                        HEARTBEAT seconds however quiet the run is
                  and last, exactly one of
                    {"event": "report", "report"}                      SyncReport.to_json()
                    {"event": "refused", "code": "ALREADY_RUNNING", "message"}
                    {"event": "error", "code", "message"}   the run could not start (the
                        SyncError's code), or the service stopped during it (SERVICE_STOPPED)
    GET /status   {"running": Progress.to_json() | null, "lastRun": the last run's summary,
                   "warnings": [what this serve runs without that its role expects (no auth,
                   plain HTTP)]}

A request while a run of the same kind (dry or not) is under way joins it: it follows that run
and gets its report, which is what an operator who types `sync` while the timer's run goes on
wants — to see it through. A request of the other kind, or any while another process (an
in-process `sync`) holds the sync lock, is refused as already running. The run belongs to the
service, not to the request: a client that goes away (Ctrl-C) only stops following it.

A request that is refused before the stream starts (a body other than {"dryRun": bool}) is
400 with the OCI error body, as on the registry's listener. The client half is
sync/service_client.py, what the commands use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance.config import Config
from appliance.control.node import NodeState
from appliance.oci.errors import ErrorCode, OCIError
from appliance.registry.context import json_body
from appliance.registry.errors import oci_errors
from appliance.storage.store import Store
from appliance.sync.lock import AlreadyRunning, sync_lock
from appliance.sync.progress import Progress
from appliance.sync.report import SyncReport
from appliance.sync.run import LAST_RUN, run_sync
from appliance.sync.service_client import (
    ALREADY_RUNNING,
    HEARTBEAT,
    MAX_SOCKET_PATH,
    NDJSON,
    SERVICE_STOPPED,
)
from appliance.sync.sources import SyncError

log = logging.getLogger(__name__)

# At most this often a `progress` event (a terminal redraws no faster anyway).
MIN_INTERVAL = 0.25


class ControlSocketError(Exception):
    """The service cannot listen on its control socket; one line saying why."""


@dataclass
class _Run:
    progress: Progress
    task: asyncio.Task[SyncReport]


class SyncService:
    """The sync runs of the running service: at most one at a time, under the same lock as an
    in-process run, followed by any number of requests."""

    def __init__(self, store: Store, config: Config, warnings: Sequence[str] = ()) -> None:
        self.store = store
        self.config = config
        self.warnings = list(warnings)
        self._run: _Run | None = None

    @property
    def running(self) -> Progress | None:
        run = self._run
        return run.progress if run is not None and not run.task.done() else None

    def start(self, dry_run: bool) -> tuple[_Run, bool]:
        """The run to follow and whether it was already under way (joined). AlreadyRunning
        when a run of the other kind is."""
        run = self._run
        if run is not None and not run.task.done():
            if run.progress.dry_run != dry_run:
                raise AlreadyRunning()
            return run, True
        progress = Progress(dry_run)
        task = asyncio.create_task(self._execute(progress))
        task.add_done_callback(lambda done: _log_outcome(progress, done))
        self._run = _Run(progress, task)
        return self._run, False

    async def _execute(self, progress: Progress) -> SyncReport:
        with sync_lock(self.store.layout.sync_lock):
            log.debug("sync %s: started%s", progress.run_id, " (dry run)" * progress.dry_run)
            report = await run_sync(self.store, self.config, progress.dry_run, progress=progress)
        # The service's store commits in groups: what the run wrote is durable before it ends.
        await self.store.flush()
        return report

    def last_run(self) -> dict[str, Any] | None:
        text = NodeState(self.store).get(LAST_RUN)
        return json.loads(text) if text else None

    async def close(self) -> None:
        """Stop a run under way (the service is stopping): what was copied stays, a blob under
        way keeps its partial, and followers are told the service stopped."""
        run = self._run
        if run is not None and not run.task.done():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.task


def _log_outcome(progress: Progress, task: asyncio.Task[SyncReport]) -> None:
    """One line per run in the service's log; also retrieves the task's exception, which a
    run nobody followed to the end would otherwise leave unread."""
    run = progress.run_id
    if task.cancelled():
        log.warning("sync %s: stopped: the service is stopping", run)
        return
    err = task.exception()
    if isinstance(err, AlreadyRunning):
        log.info("sync %s: not started: another process is syncing", run)
    elif isinstance(err, SyncError):
        log.error("sync %s: %s", run, err)
    elif err is not None:
        log.error("sync %s: failed", run, exc_info=err)
    else:
        report = task.result()
        total = report.total
        moved = total.manifests or total.blobs or total.tags_moved or total.tags_deleted
        log.log(
            logging.INFO if moved or report.errors else logging.DEBUG,
            "sync %s: finished in %.1f s: %d manifests, %d blobs, %d bytes, %d errors%s",
            run,
            report.seconds,
            total.manifests,
            total.blobs,
            total.bytes,
            len(report.errors),
            " (dry run)" * report.dry_run,
        )


# -- the server ------------------------------------------------------------------------------

SYNC_SERVICE = web.AppKey("sync_service", SyncService)


async def post_sync(request: web.Request) -> web.StreamResponse:
    dry_run = (await json_body(request)).get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise OCIError(ErrorCode.BODY_INVALID, 'the body must be {"dryRun": true|false}')
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    try:
        try:
            run, joined = request.app[SYNC_SERVICE].start(dry_run)
        except AlreadyRunning:
            await _send(response, _refused())
            return response
        await _follow(response, run, joined)
    except ConnectionResetError:
        pass  # the client stopped following; the run goes on
    return response


async def get_status(request: web.Request) -> web.StreamResponse:
    service = request.app[SYNC_SERVICE]
    running = service.running
    return web.json_response(
        {
            "running": running.to_json() if running else None,
            "lastRun": service.last_run(),
            "warnings": service.warnings,
        }
    )


async def _follow(response: web.StreamResponse, run: _Run, joined: bool) -> None:
    """Stream `run`'s progress to the client until its outcome, the last event."""
    changes: asyncio.Queue[tuple[str, dict[str, Any] | None]] = asyncio.Queue()

    def changed(kind: str) -> None:
        # Each repository's start is kept as it was, so a log can show every repository.
        changes.put_nowait((kind, run.progress.to_json() if kind == "repository" else None))

    stop_listening = run.progress.listen(changed)
    # Not the progress's `finished`: the task ends after it (the summary, the lock, a flush).
    run.task.add_done_callback(lambda _: changes.put_nowait(("done", None)))
    try:
        started = {"runId": run.progress.run_id, "joined": joined}
        await _send(response, {"event": "started", **started, "progress": run.progress.to_json()})
        sent = time.monotonic()
        while True:
            batch = await _next_changes(changes)
            repositories = [snapshot for _, snapshot in batch if snapshot is not None]
            for snapshot in repositories:
                await _send(response, {"event": "repository", "progress": snapshot})
            if any(kind == "done" for kind, _ in batch):
                break
            if not repositories:
                # Coalesced: bytes arrive per chunk, a client needs a few updates a second.
                await asyncio.sleep(max(0.0, MIN_INTERVAL - (time.monotonic() - sent)))
                await _send(response, {"event": "progress", "progress": run.progress.to_json()})
            sent = time.monotonic()
        await _send(response, _outcome(run.task))
    finally:
        stop_listening()


async def _next_changes(
    changes: asyncio.Queue[tuple[str, dict[str, Any] | None]],
) -> list[tuple[str, dict[str, Any] | None]]:
    """The changes since the last call, in order, waiting for one (at most HEARTBEAT)."""
    try:
        batch = [await asyncio.wait_for(changes.get(), HEARTBEAT)]
    except TimeoutError:
        batch = [("heartbeat", None)]
    while not changes.empty():
        batch.append(changes.get_nowait())
    return batch


def _outcome(task: asyncio.Task[SyncReport]) -> dict[str, Any]:
    if task.cancelled():
        return {
            "event": "error",
            "code": SERVICE_STOPPED,
            "message": "the service stopped during the sync",
        }
    err = task.exception()
    if err is None:
        return {"event": "report", "report": task.result().to_json()}
    if isinstance(err, AlreadyRunning):
        return _refused()
    if isinstance(err, SyncError):
        return {"event": "error", "code": err.code, "message": err.message}
    return {"event": "error", "code": "INTERNAL_ERROR", "message": f"the sync failed: {err}"}


def _refused() -> dict[str, Any]:
    return {"event": "refused", "code": ALREADY_RUNNING, "message": "a sync is already running"}


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


def make_control_app(service: SyncService) -> web.Application:
    app = web.Application(middlewares=[oci_errors])
    app[SYNC_SERVICE] = service
    app.router.add_post("/sync", post_sync)
    app.router.add_get("/status", get_status)
    return app


def bind_control_socket(path: Path) -> socket.socket:
    """A socket bound at `path` with mode 0600, not yet listening (nothing can connect before
    its mode is set). A stale socket file is replaced only if nothing answers on it; anything
    else at `path` is ControlSocketError."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    if found is not None:
        if not stat.S_ISSOCK(found.st_mode):
            raise ControlSocketError(f"{path} exists and is not a socket: remove it")
        if _answers(path):
            raise ControlSocketError(
                f"another process answers on {path}: is another `connected-registry serve` "
                "running on this data directory?"
            )
        path.unlink()  # left by a service that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
    except OSError as err:
        sock.close()
        raise ControlSocketError(f"cannot create {path}: {err.strerror or err}") from None
    return sock


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@contextlib.asynccontextmanager
async def serving(
    store: Store, config: Config, warnings: Sequence[str] = ()
) -> AsyncIterator[SyncService | None]:
    """The control socket of `store`'s data directory, served for the block (None: its path
    is too long for a UNIX socket, and `sync` then runs in its own process); `GET /status`
    repeats `warnings`. On the way out a run under way is stopped and the socket removed."""
    path = store.layout.control_socket
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        log.warning("no control socket: %s is too long a path for a UNIX socket", path)
        yield None
        return
    sock = bind_control_socket(path)
    inode = os.stat(path).st_ino
    service = SyncService(store, config, warnings)
    # No access log: the timer asks every minute, and the run logs its own outcome.
    runner = web.AppRunner(
        make_control_app(service), access_log=None, handle_signals=False, shutdown_timeout=2
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield service
    finally:
        await service.close()
        await runner.cleanup()
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == inode:  # never another service's socket
                path.unlink()
