"""A pull from one upstream: the loop over its repositories, each reconciled into the store.

Which repositories: every one in the source's scope (`repositories_in_scope`), or the ones the
parent's change feed named (plan.py). How each is copied is copy.py's (`RepositoryCopy`); this
module counts, logs and reports it. A refused repository is an error of its own and the pull
goes on; an unreachable upstream or the end of the window stops the pull, keeping what moved.
"""

from __future__ import annotations

import logging

from appliance.control.parent import PARENT_UNREACHABLE
from appliance.oci.errors import OCIError
from appliance.storage.store import Store
from appliance.sync.client import RegistryClient, RegistryError, UpstreamUnreachable
from appliance.sync.content import repositories_in_scope
from appliance.sync.copy import RepositoryCopy, Transfer, WindowClosed
from appliance.sync.problems import Problem
from appliance.sync.progress import current_progress
from appliance.sync.report import SourceReport
from appliance.sync.schedule import Deadline
from appliance.sync.sources import Source
from appliance.system.logs import fields

log = logging.getLogger(__name__)


async def pull(
    store: Store,
    source: Source,
    client: RegistryClient,
    mode: str,
    dry_run: bool,
    deadline: Deadline,
    named: list[str] | None,
    untagged: dict[str, list[str]] | None = None,
    deleted: dict[str, list[str]] | None = None,
) -> SourceReport:
    """Reconcile `named` repositories, or (None) every repository in the source's scope; then
    copy the manifests `untagged` names by digest and delete those `deleted` names (both from
    the change feed). Failures are in the
    report, never raised. `client` is entered here."""
    report = SourceReport(source.label)
    current_progress().set_phase("pulling", source.label)
    async with client:
        try:
            if named is None:
                scope = await repositories_in_scope(client, source.repositories)
                report.warnings += scope.warnings
                repositories = scope.repositories
            else:
                repositories = named
            current_progress().repositories_found(len(repositories))
            for repository in repositories:
                if deadline.passed():
                    raise WindowClosed()
                report.repositories_checked += 1
                current_progress().repository_started(repository)
                copy = RepositoryCopy(
                    client,
                    store,
                    repository,
                    source.tag_filter,
                    mode,
                    dry_run=dry_run,
                    deadline=deadline,
                )
                try:
                    await copy.reconcile()
                    await copy.delete_untagged_gone_upstream()
                    await copy.copy_untagged((untagged or {}).get(repository, []))
                    copy.delete_gone_upstream((deleted or {}).get(repository, []))
                except (UpstreamUnreachable, WindowClosed):
                    report.transfer.add(copy.transfer)
                    raise
                except (RegistryError, OCIError) as err:
                    code = _code(err)
                    report.errors.append(Problem(code, f"{repository}: {err.message}"))
                    log.warning(
                        "%s: %s: %s",
                        repository,
                        code,
                        err.message,
                        extra=fields(repository=repository),
                    )
                report.transfer.add(copy.transfer)
                _log_copied(repository, copy.transfer, dry_run)
                current_progress().repository_finished()
        except WindowClosed:
            report.window_closed = True
            report.warnings.append("the sync window closed: stopped; the rest follows next window")
        except UpstreamUnreachable as err:
            report.unreachable = True
            code = PARENT_UNREACHABLE if source.is_parent else err.code
            report.errors.append(Problem(code, err.message))
        except RegistryError as err:
            report.errors.append(Problem(err.code, err.message))
    return report


def _log_copied(repository: str, moved: Transfer, dry_run: bool) -> None:
    """One journal line per repository that changed, with its REPOSITORY field."""
    if not (
        moved.manifests
        or moved.tags_moved
        or moved.tags_deleted
        or moved.blobs
        or moved.manifests_deleted
    ):
        return
    log.info(
        "%s %s: %d manifests, %d blobs (%d bytes), %d tags moved, %d deleted",
        "would copy" if dry_run else "copied",
        repository,
        moved.manifests,
        moved.blobs,
        moved.bytes,
        moved.tags_moved,
        moved.tags_deleted,
        extra=fields(repository=repository),
    )


def _code(err: RegistryError | OCIError) -> str:
    return err.code if isinstance(err, RegistryError) else err.code.name
