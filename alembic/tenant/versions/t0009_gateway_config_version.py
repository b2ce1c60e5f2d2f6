"""gateway: a version of the tenant's gateway configuration, changed by every change to it

Revision ID: t0009
Revises: t0008
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = 't0009'
down_revision = 't0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('gateway_settings', sa.Column(
        'config_version', sa.String(length=36), server_default=sa.text('gen_random_uuid()::text'),
        nullable=False))


def downgrade() -> None:
    op.drop_column('gateway_settings', 'config_version')
