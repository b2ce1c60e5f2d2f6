"""backups: each restore over a live tenant database, by the approval it consumed

Revision ID: 0012_backup_restore
Revises: 0011_sso_policy
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0012_backup_restore'
down_revision = '0011_sso_policy'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'backup_replacements',
        sa.Column('approval_id', sa.String(length=36), nullable=False),
        sa.Column('tenant_id', sa.BigInteger(), nullable=False),
        sa.Column('backup_id', sa.String(length=40), nullable=False),
        sa.Column('retained_database', sa.String(length=63), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('approval_id'),
    )
    op.create_index('ix_backup_replacements_tenant_id', 'backup_replacements', ['tenant_id'])


def downgrade() -> None:
    op.drop_table('backup_replacements')
