"""Fixtures for the browser tests: the real app served by uvicorn on a loopback port, and a
headless Debian Chromium driven by Playwright (its own browser download is never used).

The live server's settings replace the suite's ``settings`` fixture, so ``services``/``db`` are
built for ``http://127.0.0.1:<port>`` (the Host and Origin checks of the security edge pass).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.keys.local import LocalKeyProvider
from control_plane.settings import Settings
from control_plane.tenancy.servers import ensure_primary_server
from control_plane.web.services import Services
from tests.conftest import make_settings
from tests.control_plane.tenancy.conftest import drop_tenant_leftovers
from tests.live_server import Port, serve

CHROMIUM_CANDIDATE = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS_DIR = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium; skipped when absent unless MAGISTRATE_REQUIRE_BROWSER=1."""
    path = CHROMIUM_CANDIDATE if os.access(CHROMIUM_CANDIDATE, os.X_OK) else None
    path = path or shutil.which("chromium")
    if path is None:
        if os.environ.get("MAGISTRATE_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required (MAGISTRATE_REQUIRE_BROWSER=1) but was not found")
        pytest.skip("Chromium is not installed (set MAGISTRATE_REQUIRE_BROWSER=1 to fail instead)")
    return path


@pytest.fixture
def live_port() -> Iterator[Port]:
    """The live server's port, held from now (its number goes into the settings)."""
    with Port() as port:
        yield port


@pytest.fixture
def settings(live_port: Port, tmp_path: Path) -> Settings:
    """Overrides the suite's ``settings``: the app answers on the live server's address."""
    return make_settings(public_url=live_port.url,
                         allowed_hosts=("127.0.0.1",), home=tmp_path / "home",
                         gateway_private_networks=("127.0.0.0/8",))  # local receivers


@pytest.fixture
def live_server(chromium_path: str, services: Services, live_port: Port) -> Iterator[str]:
    """The real app under uvicorn in a background thread; yields its base URL."""
    with serve(services, live_port) as url:
        yield url


@pytest.fixture
def tenancy_ready(services, pg_server_url, settings):
    """The test server registered for tenant databases and a local key-encryption key
    ``test-kek``; this run's tenant databases dropped before and after."""
    drop_tenant_leftovers(pg_server_url)
    with services.session_factory() as s, s.begin():
        ensure_primary_server(s, url=pg_server_url, sealer=services.sealer)
    LocalKeyProvider(settings.home / "keys").create_key("test-kek")
    yield
    services.tenant_connections.close()
    drop_tenant_leftovers(pg_server_url)


@pytest.fixture
def browser(chromium_path: str) -> Iterator[object]:
    """A headless Chromium (``playwright.sync_api.Browser``), closed after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_path, headless=True,
                                      args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR
