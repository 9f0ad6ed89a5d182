"""The one rule for what maintenance may delete (DESIGN §8).

Garbage collection, retention, watermark eviction and quotas all ask `kept_because` before they
remove a manifest or the bytes it references, so the reasons to keep something are decided in
one place: today a write a ReadWrite device has not yet sent up to its parent (deleting it
would lose the only copy); locks and pins join here.
"""

from __future__ import annotations

from appliance.oci.digests import Digest
from appliance.storage.store import Store


def kept_because(store: Store, repository: str, digest: str | Digest) -> str | None:
    """Why maintenance must leave the manifest `digest` of `repository` (and its blobs) alone,
    in words for a report; None when it may go."""
    if store.outbox.holds(repository, str(digest)):
        return "a local push not yet sent to the parent"
    return None
