"""end-1: the version check every client sends first."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from support.registry import API_VERSION, assert_oci_error

if TYPE_CHECKING:
    from support.server import RegistryProcess


async def test_version_check_answers_200_with_api_version_header(
    registry: RegistryProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{registry.url}/v2/") as resp:
        await resp.read()
        assert resp.status == 200
        assert resp.headers["Docker-Distribution-API-Version"] == API_VERSION


async def test_version_check_answers_head_too(
    registry: RegistryProcess, http: aiohttp.ClientSession
) -> None:
    async with http.head(f"{registry.url}/v2/") as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Distribution-API-Version"] == API_VERSION


async def test_unknown_v2_route_is_a_clean_404(
    registry: RegistryProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{registry.url}/v2/x/no-such-endpoint/here") as resp:
        await assert_oci_error(resp, 404, "NAME_UNKNOWN")
