"""Fixtures of the governed-MCP tests: a tenant with one member per role, a real upstream MCP
server, Magistrate under uvicorn, an API key with the ``mcp`` scope, and the upstream
registered with its tools folded into the catalogue."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings
from tests.control_plane.approvals.helpers import Team, make_team
from tests.tenant_runtime.mcp.helpers import (
    Upstream,
    endpoint,
    list_names,
    register,
    run,
    serve_magistrate,
    serve_upstream,
)


@pytest.fixture
def settings(tmp_path):
    # the upstream listens on loopback: the operator lets routes reach it
    return make_settings(home=tmp_path / "home", gateway_private_networks=("127.0.0.0/8",))


@pytest.fixture
def team(services, db, database_url, primary_server, local_kek) -> Team:
    return make_team(services, db, database_url)


@pytest.fixture
def upstream():
    with serve_upstream() as up:
        yield up


@pytest.fixture
def base(services):
    with serve_magistrate(services) as url:
        yield url


@pytest.fixture
def key(team: Team) -> str:
    return team.api_key("desk-agent", who="owner", scopes=("mcp",))


@pytest.fixture
def synced(team, upstream, base, key) -> Upstream:
    """The upstream registered; a first tools/list folds its tools into the catalogue."""
    register(team, upstream)
    assert run(list_names, endpoint(base, team), key) == []  # new tools start denied
    return upstream
