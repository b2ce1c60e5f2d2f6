"""tenants: an Owner may require two-factor sign-in of the tenant's members

Revision ID: 0009_console
Revises: 0007_backups
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = '0009_console'
down_revision = '0007_backups'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('tenants', sa.Column('require_mfa', sa.Boolean(),
                                       server_default=sa.text('false'), nullable=False))


def downgrade() -> None:
    op.drop_column('tenants', 'require_mfa')
