"""gateway: an idempotency key on calls, and the sealed answer a keyed call keeps until the job
that asked for it has recorded it

Revision ID: t0011
Revises: t0010
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = 't0011'
down_revision = 't0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('gateway_calls', sa.Column('idempotency_key', sa.String(length=200),
                                             nullable=True))
    op.add_column('gateway_calls', sa.Column('answer_sealed', sa.LargeBinary(), nullable=True))
    op.create_index('ix_gateway_calls_idempotency_key', 'gateway_calls', ['idempotency_key'],
                    postgresql_where=sa.text('idempotency_key IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_gateway_calls_idempotency_key', table_name='gateway_calls')
    op.drop_column('gateway_calls', 'answer_sealed')
    op.drop_column('gateway_calls', 'idempotency_key')
