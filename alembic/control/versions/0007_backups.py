"""backups: published backups and their wrapped data keys

Revision ID: 0007_backups
Revises: 0006_identity
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = '0007_backups'
down_revision = '0006_identity'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('backups',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.BigInteger(), nullable=True),
    sa.Column('tenant_slug', sa.String(length=63), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
              nullable=False),
    sa.Column('destination', sa.String(length=1000), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('key_provider', sa.String(length=20), nullable=False),
    sa.Column('key_ref', sa.String(length=500), nullable=False),
    sa.Column('wrapped_key', sa.LargeBinary(), nullable=True),
    sa.Column('monthly', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('drill_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('drill_ok', sa.Boolean(), nullable=True),
    sa.Column('drill_detail', sa.String(length=1000), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_backups'))
    )
    op.create_index(op.f('ix_backups_tenant_id'), 'backups', ['tenant_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_backups_tenant_id'), table_name='backups')
    op.drop_table('backups')
