"""the gateway's spend as budget leases over striped rows: the month's row keeps only what it
has allotted to its shards; each shard row holds its allotment, what calls in flight reserved
on it and what was spent on it; a call's row names the shard it reserved on. A month's spend
so far moves to shard 0, allotted exactly what it holds.

Revision ID: t0016_spend_shards
Revises: t0015_mcp_calls
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = 't0016_spend_shards'
down_revision = 't0015_mcp_calls'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('gateway_spend_shards',
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('shard', sa.SmallInteger(), nullable=False),
    sa.Column('allotted_micros', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('reserved_micros', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('spent_micros', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.CheckConstraint('spent_micros >= 0 AND reserved_micros >= 0 AND allotted_micros >= 0', name=op.f('ck_gateway_spend_shards_not_negative')),
    sa.CheckConstraint('shard >= 0', name=op.f('ck_gateway_spend_shards_shard_number')),
    sa.ForeignKeyConstraint(['month'], ['gateway_spend_months.month'], name=op.f('fk_gateway_spend_shards_month_gateway_spend_months')),
    sa.PrimaryKeyConstraint('month', 'shard', name=op.f('pk_gateway_spend_shards'))
    )
    op.add_column('gateway_spend_months', sa.Column('allotted_micros', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('gateway_calls', sa.Column('shard', sa.SmallInteger(), server_default=sa.text('0'), nullable=False))
    op.execute("INSERT INTO gateway_spend_shards (month, shard, allotted_micros, reserved_micros, "
               "spent_micros) SELECT month, 0, spent_micros + reserved_micros, reserved_micros, "
               "spent_micros FROM gateway_spend_months")
    op.execute("UPDATE gateway_spend_months SET allotted_micros = spent_micros + reserved_micros")
    op.drop_constraint(op.f('ck_gateway_spend_months_not_negative'), 'gateway_spend_months', type_='check')
    op.drop_column('gateway_spend_months', 'reserved_micros')
    op.drop_column('gateway_spend_months', 'spent_micros')
    op.create_check_constraint(op.f('ck_gateway_spend_months_not_negative'), 'gateway_spend_months', 'allotted_micros >= 0')


def downgrade() -> None:
    op.drop_constraint(op.f('ck_gateway_spend_months_not_negative'), 'gateway_spend_months', type_='check')
    op.add_column('gateway_spend_months', sa.Column('spent_micros', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.add_column('gateway_spend_months', sa.Column('reserved_micros', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
    op.execute("UPDATE gateway_spend_months m SET spent_micros = t.spent, reserved_micros = t.reserved "
               "FROM (SELECT month, sum(spent_micros) AS spent, sum(reserved_micros) AS reserved "
               "FROM gateway_spend_shards GROUP BY month) t WHERE t.month = m.month")
    op.create_check_constraint(op.f('ck_gateway_spend_months_not_negative'), 'gateway_spend_months', 'spent_micros >= 0 AND reserved_micros >= 0')
    op.drop_column('gateway_spend_months', 'allotted_micros')
    op.drop_column('gateway_calls', 'shard')
    op.drop_table('gateway_spend_shards')
