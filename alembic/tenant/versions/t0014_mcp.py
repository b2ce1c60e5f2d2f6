"""governed MCP: upstream MCP servers, the tool catalogue, and the clients (API keys) acting as
agents at the tenant's MCP endpoint

Revision ID: t0014_mcp
Revises: t0014_gw_tools
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = 't0014_mcp'
down_revision = 't0014_gw_tools'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mcp_upstreams',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=False),
    sa.Column('credential_kind', sa.String(length=10), server_default='none', nullable=False),
    sa.Column('header_name', sa.String(length=100), nullable=True),
    sa.Column('credential_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('redaction', sa.String(length=10), server_default='internal', nullable=False),
    sa.Column('new_tools', sa.String(length=10), server_default='denied', nullable=False),
    sa.Column('created_by', sa.String(length=320), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('synced_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("credential_kind IN ('none', 'bearer', 'header')", name=op.f('ck_mcp_upstreams_credential_kind')),
    sa.CheckConstraint("redaction IN ('internal', 'external')", name=op.f('ck_mcp_upstreams_redaction')),
    sa.CheckConstraint("new_tools IN ('allowed', 'denied', 'restricted')", name=op.f('ck_mcp_upstreams_new_tools')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mcp_upstreams')),
    sa.UniqueConstraint('name', name=op.f('uq_mcp_upstreams_name'))
    )
    op.create_table('mcp_tools',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('upstream_id', sa.BigInteger(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('input_schema', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('annotations', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('policy', sa.String(length=12), server_default='denied', nullable=False),
    sa.Column('action_class', sa.String(length=100), nullable=True),
    sa.Column('side_effecting', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('side_effecting_override', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('pinned_digest', sa.String(length=64), nullable=True),
    sa.Column('seen_digest', sa.String(length=64), nullable=False),
    sa.Column('quarantined', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('flags', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('decided_by', sa.String(length=320), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("policy IN ('allowed', 'denied', 'restricted')", name=op.f('ck_mcp_tools_policy')),
    sa.ForeignKeyConstraint(['upstream_id'], ['mcp_upstreams.id'], name=op.f('fk_mcp_tools_upstream_id_mcp_upstreams'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mcp_tools')),
    sa.UniqueConstraint('upstream_id', 'name', name='uq_mcp_tools_upstream_name')
    )
    op.create_table('mcp_clients',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('api_key_id', sa.BigInteger(), nullable=False),
    sa.Column('agent_id', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_mcp_clients_agent_id_agents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mcp_clients')),
    sa.UniqueConstraint('api_key_id', name=op.f('uq_mcp_clients_api_key_id'))
    )


def downgrade() -> None:
    op.drop_table('mcp_clients')
    op.drop_table('mcp_tools')
    op.drop_table('mcp_upstreams')
