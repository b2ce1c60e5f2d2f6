"""Worker tests that need a provisioned tenant use the tenancy fixtures."""

from tests.control_plane.tenancy.conftest import (  # noqa: F401
    local_kek,
    primary_server,
    settings,
)
