"""Alembic environment for the tenant tree: run once per tenant database, as that tenant's
``_owner`` role, with the URL handed in by the control plane's migration fan-out."""

from control_plane.migrations import run_online

run_online(None)
