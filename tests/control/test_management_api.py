"""The root's management API (`/manage/v1/connected-registries`) over HTTP, against a real
server: who may call it, what each route answers, and how it meets the gateway devices use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from appliance.control.connection_string import parse

if TYPE_CHECKING:
    from support.server import RegistryProcess

    StartRegistry = Callable[..., RegistryProcess]

PROJECT = Path(__file__).resolve().parents[2]
API = "/manage/v1/connected-registries"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(user, password)}


def cli_json(data_dir: Path, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTED_REGISTRY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "appliance", *args, "--output", "json", "--data-dir", str(data_dir)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class Root:
    """A served root and an HTTP session; `call` answers (status, JSON body)."""

    def __init__(self, server: RegistryProcess, http: aiohttp.ClientSession, password: str):
        self.server = server
        self.http = http
        self.admin = basic("cloudadmin", password)

    async def call(
        self,
        method: str,
        path: str = "",
        body: Any = None,
        auth: dict[str, str] | None = None,
        **params: str,
    ) -> tuple[int, Any]:
        async with self.http.request(
            method, f"{self.server.url}{API}{path}", json=body, params=params,
            headers=auth or self.admin,
        ) as response:
            return response.status, await response.json()

    async def gateway(
        self, method: str, name: str, verb: str, password: str, body: Any = None
    ) -> tuple[int, Any]:
        async with self.http.request(
            method, f"{self.server.url}/gateway/v1/registries/{name}/{verb}", json=body,
            headers=basic(name, password),
        ) as response:
            data = await response.json() if response.status != 204 else None
            return response.status, data


@pytest.fixture
async def root(
    tmp_path: Path, start_registry: StartRegistry, http: aiohttp.ClientSession
) -> Root:
    server = start_registry(data_dir=tmp_path / "data", args=["--auth", "--insecure-http"])
    made = cli_json(tmp_path / "data", "cloud", "init", "--login-server", server.host)
    return Root(server, http, made["adminToken"]["passwords"][0]["value"])


def error(body: Any) -> tuple[str, str]:
    (only,) = body["errors"]
    return only["code"], only["message"]


async def test_a_node_that_is_not_a_root_has_no_management_api(
    start_registry: StartRegistry, http: aiohttp.ClientSession
) -> None:
    server = start_registry(args=["--auth", "--insecure-http"])
    async with http.get(f"{server.url}{API}") as response:
        assert response.status == 404
        assert error(await response.json())[0] == "NAME_UNKNOWN"


async def test_only_the_admin_token_may_call_it(root: Root, tmp_path: Path) -> None:
    async with root.http.get(f"{root.server.url}{API}") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        assert error(await response.json())[0] == "UNAUTHORIZED"
    status, body = await root.call("GET", auth=basic("cloudadmin", "wrong-password"))
    assert (status, error(body)[0]) == (401, "UNAUTHORIZED")

    client = cli_json(
        tmp_path / "data", "token", "create", "client1", "--repository", "**", "content/read"
    )
    client_auth = basic("client1", client["passwords"][0]["value"])
    status, body = await root.call("GET", auth=client_auth)
    assert status == 403
    assert error(body) == ("DENIED", "token 'client1' is not this root's admin token")
    status, body = await root.call("POST", body={"name": "edge01", "repositories": ["a"]},
                                   auth=client_auth)
    assert status == 403

    assert await root.call("GET") == (200, [])


async def test_create_show_update_list_and_delete(root: Root) -> None:
    status, made = await root.call("POST", body={"name": "edge01", "repositories": ["demo/**"]})
    assert status == 201
    assert (made["mode"], made["connectionState"]) == ("ReadWrite", "Offline")
    status, body = await root.call("POST", body={"name": "Edge01", "repositories": ["demo/a"]})
    assert status == 400 and "already exists" in error(body)[1]
    status, body = await root.call(
        "POST", body={"name": "floor01", "parent": "edge01", "repositories": ["demo/x/*"],
                      "mode": "ReadOnly"},
    )
    assert status == 201
    status, body = await root.call(
        "POST", body={"name": "shelf01", "parent": "floor01", "repositories": ["demo/x/a"]}
    )
    assert status == 400 and "ReadOnly parent only has ReadOnly children" in error(body)[1]
    status, body = await root.call(
        "POST", body={"name": "shelf01", "parent": "nosuch1", "repositories": ["demo/x/a"]}
    )
    assert (status, error(body)[0]) == (404, "NAME_UNKNOWN")

    status, shown = await root.call("GET", "/floor01")
    assert (status, shown["parent"], shown["repositories"]) == (200, "edge01", ["demo/x/*"])
    status, body = await root.call("GET", "/nosuch1")
    assert status == 404
    assert error(body) == ("NAME_UNKNOWN", "connected registry 'nosuch1' not found")

    status, updated = await root.call(
        "PATCH",
        "/floor01",
        {"syncSchedule": "0 1 * * *", "syncWindow": "PT3H", "logLevel": "Error"},
    )
    assert status == 200
    assert (updated["syncSchedule"], updated["syncWindow"], updated["logLevel"]) == (
        "0 1 * * *", "PT3H", "Error",
    )
    status, body = await root.call("PATCH", "/floor01", {"mode": "ReadWrite"})
    assert status == 400 and "mode can't be changed" in error(body)[1]
    status, body = await root.call("PATCH", "/floor01", {"parent": None})
    assert status == 400 and "parent can't be changed" in error(body)[1]
    status, body = await root.call("PATCH", "/floor01", {"syncWindow": 3})
    assert status == 400 and "syncWindow must be a string" in error(body)[1]

    async with root.http.post(
        f"{root.server.url}{API}", data=b"{not json", headers=root.admin
    ) as response:
        assert response.status == 400
        assert "JSON object" in error(await response.json())[1]

    assert [cr["name"] for cr in (await root.call("GET"))[1]] == ["edge01", "floor01"]
    assert [cr["name"] for cr in (await root.call("GET", noChildren="true"))[1]] == ["edge01"]
    assert [cr["name"] for cr in (await root.call("GET", parent="edge01"))[1]] == ["floor01"]

    status, body = await root.call("DELETE", "/edge01")
    assert status == 400 and "below it" in error(body)[1]
    assert await root.call("DELETE", "/floor01", cleanup="true") == (200, {"commands": []})
    status, body = await root.call("GET", "/edge01/permissions")
    assert [g["gateway"] for g in body["gateways"]] == ["edge01"]
    status, body = await root.call("DELETE", "/edge01")
    assert status == 200 and "connected-registry token delete edge01 --yes" in body["commands"]
    assert await root.call("GET") == (200, [])


async def test_get_settings_activates_a_device_and_its_child_then_deactivate_frees_it(
    root: Root,
) -> None:
    await root.call("POST", body={"name": "edge01", "repositories": ["demo/**"]})
    await root.call(
        "POST", body={"name": "shelf01", "parent": "edge01", "repositories": ["demo/a"]}
    )
    status, body = await root.call("POST", "/shelf01/get-settings", {"parentProtocol": "https"})
    assert (status, error(body)[0]) == (409, "PARENT_NOT_ACTIVATED")

    status, settings = await root.call(
        "POST", "/edge01/get-settings", {"parentProtocol": "http", "generatePassword": 1}
    )
    assert status == 200
    parsed = parse(settings["connectionString"])
    assert parsed.base_url == root.server.url
    device = {
        "instanceId": uuid.uuid4().hex, "version": "0.1.0", "loginServer": "10.0.0.5",
        "hostname": "edge01",
    }
    status, _ = await root.gateway("POST", "edge01", "activate", parsed.password, device)
    assert status == 200
    status, shown = await root.call("GET", "/edge01")
    assert (shown["activationStatus"], shown["loginServer"]) == ("Active", "10.0.0.5")

    # A child's parent endpoint is what its parent reported (443 when it named no port); http
    # off loopback is refused.
    status, child = await root.call("POST", "/shelf01/get-settings", {"parentProtocol": "https"})
    assert status == 200
    assert child["parentGatewayEndpoint"] == "10.0.0.5:443"
    assert child["syncTokenPassword"] is None
    status, body = await root.call("POST", "/shelf01/get-settings", {"parentProtocol": "http"})
    assert status == 400 and "loopback" in error(body)[1]

    replacement = {**device, "instanceId": uuid.uuid4().hex}
    status, body = await root.gateway("POST", "edge01", "activate", parsed.password, replacement)
    assert (status, error(body)[0]) == (409, "ALREADY_ACTIVATED")
    status, shown = await root.call("POST", "/edge01/deactivate")
    assert (status, shown["activationStatus"]) == (200, "Inactive")
    status, _ = await root.gateway("POST", "edge01", "activate", parsed.password, replacement)
    assert status == 200


async def test_get_settings_refuses_what_it_does_not_understand(root: Root) -> None:
    await root.call("POST", body={"name": "edge01", "repositories": ["a"]})
    for body, message in [
        ({"parentProtocol": "ftp"}, "parentProtocol must be https or http"),
        ({"parentProtocol": "https", "generatePassword": True}, "generatePassword must be 1, 2"),
        ({"parentProtocol": "https", "generatePassword": 3}, "generatePassword must be 1, 2"),
        ({"parentProtocol": "https", "password": 1}, "unknown field 'password'"),
    ]:
        status, answer = await root.call("POST", "/edge01/get-settings", body)
        assert status == 400 and message in error(answer)[1], answer


async def test_a_body_that_is_not_a_json_object_is_body_invalid_on_both_apis(root: Root) -> None:
    await root.call("POST", body={"name": "edge01", "repositories": ["a"]})
    _, settings = await root.call(
        "POST", "/edge01/get-settings", {"parentProtocol": "http", "generatePassword": 1}
    )
    device = basic("edge01", parse(settings["connectionString"]).password)
    refused = {"errors": [{"code": "BODY_INVALID", "message": "the body must be a JSON object"}]}
    for method, path, auth in [
        ("POST", API, root.admin),
        ("PATCH", f"{API}/edge01", root.admin),
        ("POST", "/gateway/v1/registries/edge01/activate", device),
        ("PUT", "/gateway/v1/registries/edge01/status", device),
    ]:
        for data in (b"{not json", b"[1, 2]", b"\xff"):
            async with root.http.request(
                method, f"{root.server.url}{path}", data=data, headers=auth
            ) as response:
                answer = (response.status, await response.json())
            assert answer == (400, refused), (method, path, data)


async def test_permissions_client_tokens_and_resync(root: Root, tmp_path: Path) -> None:
    cli_json(tmp_path / "data", "token", "create", "client1", "--repository", "a", "content/read")
    await root.call(
        "POST", body={"name": "edge01", "repositories": ["a"], "clientTokens": ["client1"]}
    )
    status, tokens = await root.call("GET", "/edge01/client-tokens")
    assert status == 200
    assert [(t["name"], t["scopeMap"]) for t in tokens] == [("client1", "client1-scope-map")]

    status, scope = await root.call("PATCH", "/edge01/permissions", {"add": ["b/*"]})
    assert status == 200
    assert [p["repository"] for p in scope["repositories"]] == ["a", "b/*"]
    status, scope = await root.call("PATCH", "/edge01/permissions", {"remove": ["a"]})
    assert [p["repository"] for p in scope["repositories"]] == ["b/*"]
    status, body = await root.call("PATCH", "/edge01/permissions", {"remove": ["b/*"]})
    assert status == 400 and "no repositories" in error(body)[1]
    status, body = await root.call("PATCH", "/edge01/permissions", {"add": "c"})
    assert status == 400 and "add must be a list of strings" in error(body)[1]

    status, shown = await root.call("POST", "/edge01/resync")
    assert (status, shown["resyncRequested"]) == (200, True)
    status, settings = await root.call(
        "POST", "/edge01/get-settings", {"parentProtocol": "http", "generatePassword": 2}
    )
    password = parse(settings["connectionString"]).password
    status, device_settings = await root.gateway("GET", "edge01", "settings", password)
    assert status == 200 and device_settings["resync"] is True
