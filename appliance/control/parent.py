"""Who this node's parent is, as activation recorded it: where it is, the credential we sync
with, and the certificate we trust it by. The one place that reads it; the gateway client
(control/gateway_client.py) and the parent as a sync source (sync/sources.py) both start here."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.control.node import NodeState
from appliance.storage.store import Store
from appliance.transport import PeerError

# The codes of "no parent answered" and "the parent's certificate is not trusted".
PARENT_UNREACHABLE = "PARENT_UNREACHABLE"
UNTRUSTED_PARENT = "UNTRUSTED_PARENT"


@dataclass(frozen=True)
class Parent:
    """The parent of an activated connected registry."""

    # This node's connected-registry name, as the parent knows it.
    registry_name: str
    # HOST:PORT and http or https, from the connection string.
    endpoint: str
    protocol: str
    # The sync token's credential.
    token: str
    password: str
    # The CA pinned at activation (or copied from `--ca-file`); None: the system store.
    ca_pem: bytes | None

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.endpoint}"


def parent_of(store: Store) -> Parent:
    """The parent of this node; PeerError `NOT_ACTIVATED` when it has none."""
    state = NodeState(store)
    endpoint, protocol = state.get("parent_endpoint"), state.get("parent_protocol")
    credential = state.sync_credential()
    name = state.get("name")
    if not endpoint or not protocol or credential is None or not name:
        raise PeerError("NOT_ACTIVATED", "this node is not an activated connected registry")
    anchor = store.layout.parent_ca_cert
    return Parent(
        registry_name=name,
        endpoint=endpoint,
        protocol=protocol,
        token=credential.token,
        password=credential.password,
        ca_pem=anchor.read_bytes() if anchor.exists() else None,
    )
