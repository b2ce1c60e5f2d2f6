"""approval gates: action classes, requests, decisions

Revision ID: t0006
Revises: t0005
Create Date: 2026-11-25
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = 't0006'
down_revision = 't0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the approvals area


def downgrade() -> None:
    pass
