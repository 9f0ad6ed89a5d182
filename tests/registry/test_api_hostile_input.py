"""Hostile and malformed input: refused with a clean OCI error, never a 500, never a file
written outside the data directory."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from helpers import (
    assert_not_server_error,
    assert_oci_error,
    get_blob,
    raw_url,
    start_upload,
    with_query,
)
from oci import OCI_MANIFEST, digest_of, make_image, push_blob, push_image, push_manifest

if TYPE_CHECKING:
    from conftest import RegistryProcess

BAD_NAMES = [
    "../evil",
    "..",
    "a/../../evil",
    "Upper/Case",
    "a" * 300,
    "a//b",
    "a/",
    "/a",
    "%2e%2e/evil",
    "a/%2e%2e/%2e%2e/evil",
    "a%2f..%2f..%2fevil",
    "-a",
    "a..b",
    "a/_b",
    "a%00b",
]
BAD_NAME_IDS = [
    "dotdot-slash", "dotdot", "inner-dotdot", "upper-case", "300-chars", "empty-segment",
    "trailing-slash", "leading-slash", "encoded-dotdot", "encoded-inner-dotdot",
    "encoded-slashes", "leading-dash", "double-dot", "segment-leading-underscore", "nul",
]


async def assert_name_refused(resp: aiohttp.ClientResponse) -> None:
    """400 NAME_INVALID, or a 404 that routing gave; either way a clean OCI error."""
    if resp.status == 400:
        await assert_oci_error(resp, 400, "NAME_INVALID")
    else:
        await assert_oci_error(resp, 404)


@pytest.mark.parametrize("name", BAD_NAMES, ids=BAD_NAME_IDS)
async def test_bad_repository_name_is_refused_on_read(
    registry: RegistryProcess, http: aiohttp.ClientSession, name: str
) -> None:
    async with http.get(raw_url(registry.url, f"/v2/{name}/tags/list")) as resp:
        await assert_name_refused(resp)
    digest = digest_of(b"x")
    async with http.get(raw_url(registry.url, f"/v2/{name}/blobs/{digest}")) as resp:
        await assert_name_refused(resp)
    async with http.get(raw_url(registry.url, f"/v2/{name}/manifests/latest")) as resp:
        await assert_name_refused(resp)


@pytest.mark.parametrize("name", BAD_NAMES, ids=BAD_NAME_IDS)
async def test_bad_repository_name_is_refused_on_push(
    registry: RegistryProcess, http: aiohttp.ClientSession, name: str
) -> None:
    async with http.post(raw_url(registry.url, f"/v2/{name}/blobs/uploads/")) as resp:
        await assert_name_refused(resp)
    image = make_image(seed=name)
    async with http.put(
        raw_url(registry.url, f"/v2/{name}/manifests/latest"),
        data=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        await assert_name_refused(resp)


async def attempt_escape(http: aiohttp.ClientSession, base: str, marker: str) -> None:
    """Every way a name, upload id, tag or digest could become a path; finish any upload the
    server wrongly opens, so a traversal bug would really write a file."""
    payload = f"payload {marker}".encode()
    names = [
        f"../../{marker}", f"..%2f..%2f{marker}", f"%2e%2e/%2e%2e/{marker}",
        f"a/../../../{marker}", f"a/%2e%2e/%2e%2e/%2e%2e/{marker}",
    ]
    for name in names:
        async with http.post(raw_url(base, f"/v2/{name}/blobs/uploads/")) as resp:
            await resp.read()
            location = resp.headers.get("Location") if resp.status == 202 else None
        if location:  # the server should never get here; if it does, finish the upload
            full = location if location.startswith("http") else base + location
            sep = "&" if "?" in full else "?"
            url = raw_url(f"{full}{sep}digest={digest_of(payload)}", "")
            async with http.put(url, data=payload) as resp:
                await resp.read()
        async with http.put(
            raw_url(base, f"/v2/{name}/manifests/{marker}"),
            data=make_image(seed=marker).manifest,
            headers={"Content-Type": OCI_MANIFEST},
        ) as resp:
            await resp.read()
    repo = "victim/repo"
    await push_image(http, base, repo, make_image(seed="victim"), "v1")
    for upload_id in (f"..%2f..%2f..%2f{marker}", f"%2e%2e%2f%2e%2e%2f{marker}", f"..%5c{marker}"):
        url = raw_url(base, f"/v2/{repo}/blobs/uploads/{upload_id}")
        async with http.patch(url, data=payload, headers={"Content-Range": "0-10"}) as resp:
            await assert_not_server_error(resp, 400, 404)
        async with http.put(url.with_query(digest=digest_of(payload)), data=payload) as resp:
            await assert_not_server_error(resp, 400, 404)
    for tag in (f"..%2f..%2f{marker}", f"%2e%2e%2f%2e%2e%2f{marker}"):
        async with http.put(
            raw_url(base, f"/v2/{repo}/manifests/{tag}"),
            data=make_image(seed="victim").manifest,
            headers={"Content-Type": OCI_MANIFEST},
        ) as resp:
            await assert_not_server_error(resp, 400, 404)
    location = await start_upload(http, base, repo)
    for digest in (f"sha256:..%2f..%2f{marker}", f"sha256:../../{marker}"):
        url = location + ("&" if "?" in location else "?") + f"digest={digest}"
        async with http.put(raw_url(url, ""), data=payload) as resp:
            await assert_not_server_error(resp, 400, 404)


async def test_traversal_attempts_write_nothing_outside_the_data_dir(
    start_registry: Callable[..., RegistryProcess], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = start_registry()
    before = set(os.listdir(tmp_path))
    marker = f"evil{uuid.uuid4().hex[:8]}"
    await attempt_escape(http, server.url, marker)
    assert set(os.listdir(tmp_path)) == before
    assert before <= {server.data_dir.name, server.log_path.name}
    leaked = [
        *tmp_path.parent.parent.rglob(f"*{marker}*"),
        *Path("/tmp").glob(f"*{marker}*"),
        *Path("/").glob(f"*{marker}*"),
        *Path.cwd().glob(f"*{marker}*"),
    ]
    assert leaked == [], leaked


@pytest.mark.parametrize("tag", ["a" * 129, ".hidden", "-dash", "a:b", "a b"],
                         ids=["129-chars", "leading-dot", "leading-dash", "colon", "space"])
async def test_bad_tag_is_refused(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, tag: str
) -> None:
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, "v1")
    resp = await push_manifest(http, registry.url, repo, tag, image.manifest, OCI_MANIFEST)
    await assert_oci_error(resp, {400, 404})
    async with http.get(f"{registry.url}/v2/{repo}/tags/list") as listed:
        assert (await listed.json(content_type=None))["tags"] == ["v1"]


@pytest.mark.parametrize("tag", ["a" * 129, ".hidden"], ids=["129-chars", "leading-dot"])
async def test_bad_tag_is_refused_on_read(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, tag: str
) -> None:
    await push_image(http, registry.url, repo, make_image(seed=repo), "v1")
    async with http.get(f"{registry.url}/v2/{repo}/manifests/{tag}") as resp:
        await assert_oci_error(resp, {400, 404})


@pytest.mark.parametrize(
    ("content_range", "body"),
    [
        ("abc", b"0123456789"),
        ("5-2", b"0123"),
        ("0-", b"0123456789"),
        ("-5", b"012345"),
        ("0-99", b"short"),
        ("0-4", b"much longer than five bytes"),
        ("0-99999999999999999999999999", b"0123456789"),
        ("bytes=0-9", b"0123456789"),
    ],
    ids=["abc", "backwards", "open-end", "suffix", "longer-than-body", "shorter-than-body",
         "huge", "range-syntax"],
)
async def test_bad_content_range_is_416_or_400(
    registry: RegistryProcess,
    http: aiohttp.ClientSession,
    repo: str,
    content_range: str,
    body: bytes,
) -> None:
    location = await start_upload(http, registry.url, repo)
    headers = {"Content-Type": "application/octet-stream", "Content-Range": content_range}
    async with http.patch(location, data=body, headers=headers) as resp:
        await assert_oci_error(resp, {400, 416})


async def test_bad_content_range_does_not_corrupt_the_upload(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    data = b"0123456789" * 10
    location = await start_upload(http, registry.url, repo)
    headers = {"Content-Type": "application/octet-stream", "Content-Range": "0-99"}
    async with http.patch(location, data=b"junk", headers=headers) as resp:
        await assert_oci_error(resp, {400, 416})
    async with http.get(location) as status:
        if status.status == 404:  # the server dropped the session: start again
            await assert_oci_error(status, 404, "BLOB_UPLOAD_UNKNOWN")
            location = await start_upload(http, registry.url, repo)
    put = with_query(location, ("digest", digest_of(data)))
    async with http.put(put, data=data) as resp:
        assert resp.status == 201
    assert await get_blob(http, registry.url, repo, digest_of(data)) == data


@pytest.mark.parametrize(
    "header", ["bytes=abc", "bytes=5-2", "items=0-5", "bytes=0-1,5-6", "bytes=", "bytes=--1"]
)
async def test_odd_range_header_on_blob_get_is_ignored_or_refused(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, header: str
) -> None:
    data = os.urandom(100)
    digest = await push_blob(http, registry.url, repo, data)
    url = f"{registry.url}/v2/{repo}/blobs/{digest}"
    async with http.get(url, headers={"Range": header}) as resp:
        body = await resp.read()
        assert resp.status in (200, 206, 416), resp.status
        if resp.status == 200:
            assert body == data


@pytest.mark.parametrize("query", ["n=-1", "n=abc", "n=99999999999999999999999", "n=", "last="])
async def test_odd_pagination_parameters_are_handled(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, query: str
) -> None:
    await push_image(http, registry.url, repo, make_image(seed=repo), "v1")
    async with http.get(f"{registry.url}/v2/{repo}/tags/list?{query}") as resp:
        await assert_not_server_error(resp, 200, 400)
    async with http.get(f"{registry.url}/v2/_catalog?{query}") as resp:
        await assert_not_server_error(resp, 200, 400)


@pytest.mark.parametrize(
    "query", ["mount=sha256:zz&from=a", "mount=sha256:" + "0" * 64 + "&from=../x", "digest=zz"]
)
async def test_odd_upload_post_parameters_are_handled(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, query: str
) -> None:
    async with http.post(raw_url(registry.url, f"/v2/{repo}/blobs/uploads/?{query}")) as resp:
        await assert_not_server_error(resp, 202, 400, 404)


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", ""])
async def test_manifest_with_odd_content_type_is_handled(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, content_type: str
) -> None:
    image = make_image(seed=repo)
    for blob in image.blobs:
        await push_blob(http, registry.url, repo, blob)
    async with http.put(
        f"{registry.url}/v2/{repo}/manifests/v1",
        data=image.manifest,
        headers={"Content-Type": content_type},
    ) as resp:
        await assert_not_server_error(resp, 201, 400, 415)


async def test_manifest_with_invalid_descriptor_digest_is_refused(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    for blob in image.blobs:
        await push_blob(http, registry.url, repo, blob)
    body = image.manifest.replace(digest_of(image.blobs[0]).encode(), b"sha256:../../etc/passwd")
    resp = await push_manifest(http, registry.url, repo, "v1", body, OCI_MANIFEST)
    await assert_oci_error(resp, 400, "MANIFEST_INVALID", "DIGEST_INVALID")


async def test_manifest_with_negative_size_is_refused(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    for blob in image.blobs:
        await push_blob(http, registry.url, repo, blob)
    size = f'"size":{len(image.blobs[0])}'.encode()
    assert size in image.manifest
    body = image.manifest.replace(size, b'"size":-1')
    resp = await push_manifest(http, registry.url, repo, "v1", body, OCI_MANIFEST)
    await assert_oci_error(resp, 400, "MANIFEST_INVALID", "SIZE_INVALID")


async def test_a_bad_request_loses_nothing_already_stored(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    await push_image(http, registry.url, repo, image, "v1")
    resp = await push_manifest(http, registry.url, repo, "v1", b"{broken", OCI_MANIFEST)
    await assert_oci_error(resp, 400, "MANIFEST_INVALID")
    async with http.get(f"{registry.url}/v2/{repo}/manifests/v1") as got:
        assert await got.read() == image.manifest


# Digits str.isdigit() passes but int() refuses.
@pytest.mark.parametrize("n", ["\u00b2", "\u00b9", "1\u00b2"],
                         ids=["superscript-two", "superscript-one", "mixed"])
async def test_page_size_in_digits_int_refuses_is_400_unsupported(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, n: str
) -> None:
    await push_image(http, registry.url, repo, make_image(seed=repo), "v1")
    for path in (f"/v2/{repo}/tags/list", "/v2/_catalog"):
        async with http.get(f"{registry.url}{path}", params={"n": n}) as resp:
            await assert_oci_error(resp, 400, "UNSUPPORTED")


async def test_page_size_of_5000_digits_is_the_largest_page(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    """More digits than int() reads (4300): a page size past the limit, not an error."""
    await push_image(http, registry.url, repo, make_image(seed=repo), "v1")
    async with http.get(f"{registry.url}/v2/{repo}/tags/list", params={"n": "9" * 5000}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["tags"] == ["v1"]
    async with http.get(f"{registry.url}/v2/_catalog", params={"n": "9" * 5000}) as resp:
        assert resp.status == 200, await resp.text()
        assert repo in (await resp.json())["repositories"]


async def test_manifest_with_an_integer_of_5000_digits_is_manifest_invalid(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    image = make_image(seed=repo)
    for blob in image.blobs:
        await push_blob(http, registry.url, repo, blob)
    size = f'"size":{len(image.blobs[0])}'.encode()
    body = image.manifest.replace(size, b'"size":' + b"9" * 5000)
    resp = await push_manifest(http, registry.url, repo, "v1", body, OCI_MANIFEST)
    await assert_oci_error(resp, 400, "MANIFEST_INVALID")


@pytest.mark.parametrize("field", ["artifactType", "config.mediaType"])
async def test_manifest_with_a_lone_surrogate_is_manifest_invalid(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str, field: str
) -> None:
    """JSON's "\\ud800" decodes to a string that is not Unicode text and cannot be stored."""
    image = make_image(seed=repo)
    for blob in image.blobs:
        await push_blob(http, registry.url, repo, blob)
    doc = json.loads(image.manifest)
    if field == "artifactType":
        doc["artifactType"] = "\ud800"
    else:
        doc["config"]["mediaType"] = "application/\ud800"
    resp = await push_manifest(http, registry.url, repo, "v1", json.dumps(doc).encode(),
                               OCI_MANIFEST)
    await assert_oci_error(resp, 400, "MANIFEST_INVALID")
    async with http.get(f"{registry.url}/v2/{repo}/manifests/v1") as got:
        await assert_oci_error(got, 404)


async def test_content_range_of_5000_digits_is_416(
    registry: RegistryProcess, http: aiohttp.ClientSession, repo: str
) -> None:
    location = await start_upload(http, registry.url, repo)
    headers = {"Content-Type": "application/octet-stream", "Content-Range": "0-" + "9" * 5000}
    async with http.patch(location, data=b"0123456789", headers=headers) as resp:
        await assert_oci_error(resp, 416, "BLOB_UPLOAD_INVALID")


# As bytes on the wire: aiohttp's client would re-encode them.
MALFORMED_CREDENTIALS = [
    "Basic \u00e9t\u00e9".encode(),  # not base64: non-ASCII
    b"Basic \xe9\xff",  # raw bytes that are not UTF-8
    b"Basic " + base64.b64encode(b"\xff\xfe:\x80"),  # base64 of bytes not UTF-8
    b"Basic %%%",
    "Bearer \u00e9".encode(),
    b"Bearer \xff.\xfe.x",
]


def raw_request(server: RegistryProcess, method: str, path: str, authorization: bytes
                ) -> tuple[int, str | None, bytes]:
    """Status, challenge and body of one request whose Authorization is sent byte for byte."""
    conn = HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path)
        conn.putheader("Authorization", authorization)
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.getheader("WWW-Authenticate"), resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("authorization", MALFORMED_CREDENTIALS,
                         ids=["non-ascii", "not-utf8-bytes", "base64-of-not-utf8", "not-base64",
                              "bearer-non-ascii", "bearer-not-utf8"])
def test_malformed_credentials_are_401_on_every_endpoint(
    start_registry: Callable[..., RegistryProcess], tmp_path: Path, authorization: bytes
) -> None:
    """On a root with auth on, so the gateway and management APIs check credentials too."""
    server = start_registry(data_dir=tmp_path / "data", args=["--auth", "--insecure-http"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTED_REGISTRY_")}
    init = subprocess.run(
        [sys.executable, "-m", "appliance", "cloud", "init", "--login-server", server.host,
         "--data-dir", str(server.data_dir)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert init.returncode == 0, init.stderr
    for method, path in [
        ("GET", "/v2/"),
        ("GET", "/v2/team/app/tags/list"),
        ("POST", "/v2/team/app/blobs/uploads/"),
        ("GET", "/oauth2/token"),
        ("GET", "/gateway/v1/registries/edge01/settings"),
        ("GET", "/manage/v1/connected-registries"),
    ]:
        status, challenge, body = raw_request(server, method, path, authorization)
        assert status == 401, f"{method} {path}: {status} {body[:300]!r}"
        assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED", body
        assert challenge, f"{method} {path}: no challenge"
    assert "Traceback" not in server.log()
