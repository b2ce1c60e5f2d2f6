"""The async client MCP upstreams are reached through (``outbound.async_http_client``) holds the
egress rule at connect time and never follows a redirect, like the sync one."""

from __future__ import annotations

import anyio
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.routing import Route

from tenant_runtime import outbound
from tenant_runtime.gateway.egress import EgressPolicy, EgressRefused, RedirectRefused
from tests.live_server import serve_app

LOOPBACK = EgressPolicy.parse(ambient_identity=False, private_networks=("127.0.0.0/8",))


@pytest.fixture
def site():
    seen: list[str] = []

    def ok(request):
        seen.append(request.url.path)
        return PlainTextResponse("ok")

    def moved(request):
        seen.append(request.url.path)
        return RedirectResponse("http://169.254.169.254/latest/meta-data/", 307)

    with serve_app(Starlette(routes=[Route("/ok", ok, methods=["GET"]),
                                     Route("/moved", moved, methods=["GET"])])) as url:
        yield url, seen


def get(policy: EgressPolicy, url: str) -> httpx2.Response:
    async def main() -> httpx2.Response:
        async with outbound.async_http_client(policy) as client:
            return await client.get(url)

    return anyio.run(main)


def test_a_loopback_upstream_is_refused_unless_the_operator_allows_it(site):
    base, seen = site
    with pytest.raises(EgressRefused):
        get(EgressPolicy(), f"{base}/ok")
    assert seen == []  # nothing was sent
    assert get(LOOPBACK, f"{base}/ok").text == "ok"


def test_a_redirect_is_refused_and_not_followed(site):
    base, seen = site
    with pytest.raises(RedirectRefused) as refused:
        get(LOOPBACK, f"{base}/moved")
    assert "169.254.169.254" in refused.value.message
    assert seen == ["/moved"]
