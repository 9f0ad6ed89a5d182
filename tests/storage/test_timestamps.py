"""Every time the root keeps and shows is written one way: UTC, microseconds, `Z`, fixed width
(so SQL compares stamps as text correctly). These use the root's objects in-process: the
question is what is stored, whoever asked."""

from __future__ import annotations

import re
from pathlib import Path

from appliance.auth.tokens import Credentials, parse_permissions
from appliance.control.hierarchy import Hierarchy
from appliance.storage.store import Store

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def test_tokens_scope_maps_and_connected_registries_show_one_timestamp_format(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    credentials = Credentials(store.db)
    hierarchy = Hierarchy(store, credentials)
    try:
        credentials.create_scope_map("team-map", parse_permissions([("team/*", ["content/read"])]))
        token, _ = credentials.create_token(
            "client01", "team-map", expiry="2030-01-01T00:00:00+02:00"
        )
        hierarchy.create("edge01", ["team/*"])
        hierarchy.activate("edge01", "instance-1", "1.0", "edge01.local:443", "edge01")
        hierarchy.report_status("edge01", {"state": "Online"})
        registry = hierarchy.to_json(hierarchy.get("edge01"))
        scope_map = credentials.scope_map("team-map").to_json()
        password = token.to_json()["credentials"]["passwords"][0]
    finally:
        store.close()

    shown = {
        "token creationDate": token.to_json()["creationDate"],
        "token updatedDate": token.to_json()["updatedDate"],
        "password creationTime": password["creationTime"],
        "scope map creationDate": scope_map["creationDate"],
        "registry creationDate": registry["creationDate"],
        "registry updatedDate": registry["updatedDate"],
        "registry lastActivityTime": registry["lastActivityTime"],
    }
    assert {what: value for what, value in shown.items() if not STAMP.fullmatch(value)} == {}
    assert password["expiry"] == "2029-12-31T22:00:00.000000Z"
