"""gateway tools: the tenant's tool rules (which tools programs may offer to which models) and
its image policy

Revision ID: t0014_gw_tools
Revises: t0013_audit_keys
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = 't0014_gw_tools'
down_revision = 't0013_audit_keys'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('gateway_settings', sa.Column(
        'tool_rules', postgresql.JSONB(astext_type=sa.Text()),
        server_default=sa.text("'[]'"), nullable=False))
    # NULL: the profile's default (refuse under aggressive, allow otherwise)
    op.add_column('gateway_settings', sa.Column('image_policy', sa.String(length=10),
                                                nullable=True))


def downgrade() -> None:
    op.drop_column('gateway_settings', 'image_policy')
    op.drop_column('gateway_settings', 'tool_rules')
