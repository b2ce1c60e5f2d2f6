"""mcp_oauth: OAuth clients, grants, codes and tokens of the MCP authorization server

Revision ID: 0010_mcp_oauth
Revises: 0009_console
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0010_mcp_oauth'
down_revision = '0009_console'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'mcp_oauth_clients',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('client_name', sa.String(length=200), nullable=False),
        sa.Column('redirect_uris', postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column('client_uri', sa.String(length=2000), nullable=True),
        sa.Column('registered_from', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('client_id'),
    )
    op.create_table(
        'mcp_oauth_grants',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('tenant_id', sa.BigInteger(), nullable=False),
        sa.Column('user_id', sa.BigInteger(), nullable=False),
        sa.Column('client_id', sa.String(length=2000), nullable=False),
        sa.Column('client_name', sa.String(length=200), nullable=False),
        sa.Column('redirect_uri', sa.String(length=2000), nullable=False),
        sa.Column('resource', sa.String(length=2000), nullable=False),
        sa.Column('scope', sa.String(length=200), nullable=False),
        sa.Column('agent_id', sa.BigInteger(), nullable=False),
        sa.Column('agent_name', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_reason', sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_mcp_oauth_grants_tenant_id', 'mcp_oauth_grants', ['tenant_id'])
    op.create_index('ix_mcp_oauth_grants_user_id', 'mcp_oauth_grants', ['user_id'])
    op.create_table(
        'mcp_oauth_codes',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('code_hash', sa.String(length=64), nullable=False),
        sa.Column('grant_id', sa.BigInteger(), nullable=False),
        sa.Column('code_challenge', sa.String(length=128), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['grant_id'], ['mcp_oauth_grants.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('code_hash'),
    )
    op.create_index('ix_mcp_oauth_codes_grant_id', 'mcp_oauth_codes', ['grant_id'])
    op.create_table(
        'mcp_oauth_tokens',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('grant_id', sa.BigInteger(), nullable=False),
        sa.Column('kind', sa.String(length=10), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['grant_id'], ['mcp_oauth_grants.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_hash'),
    )
    op.create_index('ix_mcp_oauth_tokens_grant_id', 'mcp_oauth_tokens', ['grant_id'])


def downgrade() -> None:
    op.drop_table('mcp_oauth_tokens')
    op.drop_table('mcp_oauth_codes')
    op.drop_table('mcp_oauth_grants')
    op.drop_table('mcp_oauth_clients')
