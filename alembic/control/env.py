"""Alembic environment for the control-plane tree. Run through ``magistrate migrate``."""

from control_plane import models  # noqa: F401 - registers the tables on the metadata
from control_plane.db import Base
from control_plane.migrations import run_online

# One migrator at a time, even when several `magistrate up` / `migrate` start together.
run_online(Base.metadata, advisory_lock=74201)
