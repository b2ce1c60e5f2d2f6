"""platform chain: signed checkpoints and the platform checkpoint key

Revision ID: 0005_platform_checkpoints
Revises: 0004_api_key_scopes
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = '0005_platform_checkpoints'
down_revision = '0004_api_key_scopes'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('platform_checkpoint_keys',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('key_id', sa.String(length=16), nullable=False),
    sa.Column('public_key', sa.Text(), nullable=False),
    sa.Column('private_key_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('valid_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_platform_checkpoint_keys')),
    sa.UniqueConstraint('key_id', name=op.f('uq_platform_checkpoint_keys_key_id'))
    )
    op.create_table('platform_checkpoints',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('chain_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('signature', sa.Text(), nullable=False),
    sa.Column('key_id', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['platform_checkpoint_keys.key_id'], name=op.f('fk_platform_checkpoints_key_id_platform_checkpoint_keys')),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_platform_checkpoints'))
    )


def downgrade() -> None:
    op.drop_table('platform_checkpoints')
    op.drop_table('platform_checkpoint_keys')
