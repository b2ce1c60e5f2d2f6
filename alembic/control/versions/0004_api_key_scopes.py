"""api keys: scopes (least privilege); keys made before this hold only 'gateway'

Revision ID: 0004_api_key_scopes
Revises: 0003
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0004_api_key_scopes'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # existing keys were made for the gateway: they keep that and nothing else (README, upgrade
    # notes); a key created from now on holds exactly the scopes its creator picks
    op.add_column('api_keys', sa.Column('scopes', postgresql.ARRAY(sa.String(40)),
                                        nullable=False, server_default=sa.text("'{gateway}'")))
    op.alter_column('api_keys', 'scopes', server_default=sa.text("'{}'"))


def downgrade() -> None:
    op.drop_column('api_keys', 'scopes')
