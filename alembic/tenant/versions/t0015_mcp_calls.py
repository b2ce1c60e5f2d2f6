"""governed MCP: one row per request an agent made at the MCP endpoint (tool calls, resource
reads, prompt gets), for the tool-call history page; digests only, never arguments

Revision ID: t0015_mcp_calls
Revises: t0014_mcp
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = 't0015_mcp_calls'
down_revision = 't0014_mcp'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mcp_calls',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('agent_id', sa.BigInteger(), nullable=True),
    sa.Column('api_key_id', sa.BigInteger(), nullable=True),
    sa.Column('kind', sa.String(length=10), server_default='tool', nullable=False),
    sa.Column('upstream', sa.String(length=32), nullable=True),
    sa.Column('name', sa.String(length=2000), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('latency_ms', sa.BigInteger(), nullable=True),
    sa.Column('approval_id', sa.String(length=64), nullable=True),
    sa.Column('arguments_digest', sa.String(length=64), nullable=False),
    sa.CheckConstraint("kind IN ('tool', 'resource', 'prompt')", name=op.f('ck_mcp_calls_kind')),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_mcp_calls_agent_id_agents'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mcp_calls'))
    )
    op.create_index('ix_mcp_calls_agent_at', 'mcp_calls', ['agent_id', 'at'], unique=False)
    op.create_index('ix_mcp_calls_at', 'mcp_calls', ['at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_mcp_calls_at', table_name='mcp_calls')
    op.drop_index('ix_mcp_calls_agent_at', table_name='mcp_calls')
    op.drop_table('mcp_calls')
