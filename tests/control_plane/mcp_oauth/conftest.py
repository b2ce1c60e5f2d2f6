"""The authorization server's tests run on real tenant databases, provisioned through the
tenancy fixtures."""

from tests.control_plane.tenancy.conftest import (  # noqa: F401
    local_kek,
    primary_server,
)
