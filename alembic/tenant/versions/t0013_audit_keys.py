"""audit keys: a validity period on checkpoint keys, signed key rotations, and the notices
that send a new key's public half out of band

Revision ID: t0013_audit_keys
Revises: t0012_retention
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = 't0013_audit_keys'
down_revision = 't0012_retention'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('checkpoint_keys', sa.Column('valid_from', sa.DateTime(timezone=True),
                                               nullable=True))
    # A key was valid from when it was made, or from its first checkpoint if that is earlier
    # (created_at is the database's clock, checkpoint times the application's).
    op.execute("""
        UPDATE checkpoint_keys k SET valid_from = least(k.created_at, (
            SELECT min(c.created_at) FROM audit_checkpoints c WHERE c.key_id = k.key_id))
    """)
    op.alter_column('checkpoint_keys', 'valid_from', nullable=False)
    op.create_table('checkpoint_key_rotations',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('old_key_id', sa.String(length=16), nullable=False),
    sa.Column('new_key_id', sa.String(length=16), nullable=False),
    sa.Column('new_public_key', sa.Text(), nullable=False),
    sa.Column('rotated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('signature', sa.Text(), nullable=False),
    sa.Column('new_signature', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['old_key_id'], ['checkpoint_keys.key_id'], name=op.f('fk_checkpoint_key_rotations_old_key_id_checkpoint_keys')),
    sa.ForeignKeyConstraint(['new_key_id'], ['checkpoint_keys.key_id'], name=op.f('fk_checkpoint_key_rotations_new_key_id_checkpoint_keys')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_checkpoint_key_rotations')),
    sa.UniqueConstraint('new_key_id', name=op.f('uq_checkpoint_key_rotations_new_key_id'))
    )
    op.create_table('key_notices',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('key_id', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('last_error', sa.String(length=300), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['key_id'], ['checkpoint_keys.key_id'], name=op.f('fk_key_notices_key_id_checkpoint_keys')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_key_notices'))
    )


def downgrade() -> None:
    op.drop_table('key_notices')
    op.drop_table('checkpoint_key_rotations')
    op.drop_column('checkpoint_keys', 'valid_from')
