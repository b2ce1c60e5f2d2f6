"""backups: the public checkpoint keys that verify a tenant's backup manifests

A tenant backup's manifest is signed with the tenant's checkpoint key. The public halves are
recorded here, in the control plane, when a backup is made, so that a restore can verify a
manifest without the tenant's live database (the database that is lost when a restore is
needed most). Public keys only; the private halves stay sealed in the tenant database.

Revision ID: 0016_backup_keys
Revises: 0013_key_notify
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0016_backup_keys'
down_revision = '0013_key_notify'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'backup_signing_keys',
        sa.Column('tenant_id', sa.BigInteger(), nullable=False),
        sa.Column('key_id', sa.String(length=16), nullable=False),
        sa.Column('public_key', sa.Text(), nullable=False),
        sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('tenant_id', 'key_id'),
    )


def downgrade() -> None:
    op.drop_table('backup_signing_keys')
