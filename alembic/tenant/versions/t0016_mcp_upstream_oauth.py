"""governed MCP: OAuth client credentials towards an upstream (client id, scope, token
endpoint and client authentication method in the clear; the client secret or private key
sealed in ``credential_sealed`` like the other credential kinds)

Revision ID: t0016_mcp_upstream_oauth
Revises: t0016_spend_shards
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = 't0016_mcp_upstream_oauth'
down_revision = 't0016_spend_shards'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('mcp_upstreams', sa.Column('oauth_client_id', sa.String(length=255),
                                             nullable=True))
    op.add_column('mcp_upstreams', sa.Column('oauth_scope', sa.String(length=1000),
                                             nullable=True))
    op.add_column('mcp_upstreams', sa.Column('oauth_token_endpoint', sa.String(length=2000),
                                             nullable=True))
    op.add_column('mcp_upstreams', sa.Column('oauth_auth_method', sa.String(length=20),
                                             nullable=True))
    op.drop_constraint(op.f('ck_mcp_upstreams_credential_kind'), 'mcp_upstreams', type_='check')
    op.create_check_constraint(op.f('ck_mcp_upstreams_credential_kind'), 'mcp_upstreams',
                               "credential_kind IN ('none', 'bearer', 'header', 'oauth')")
    op.create_check_constraint(
        op.f('ck_mcp_upstreams_oauth_auth_method'), 'mcp_upstreams',
        "oauth_auth_method IS NULL OR oauth_auth_method IN "
        "('client_secret_basic', 'client_secret_post', 'private_key_jwt')")


def downgrade() -> None:
    op.drop_constraint(op.f('ck_mcp_upstreams_oauth_auth_method'), 'mcp_upstreams', type_='check')
    op.execute("DELETE FROM mcp_upstreams WHERE credential_kind = 'oauth'")
    op.drop_constraint(op.f('ck_mcp_upstreams_credential_kind'), 'mcp_upstreams', type_='check')
    op.create_check_constraint(op.f('ck_mcp_upstreams_credential_kind'), 'mcp_upstreams',
                               "credential_kind IN ('none', 'bearer', 'header')")
    op.drop_column('mcp_upstreams', 'oauth_auth_method')
    op.drop_column('mcp_upstreams', 'oauth_token_endpoint')
    op.drop_column('mcp_upstreams', 'oauth_scope')
    op.drop_column('mcp_upstreams', 'oauth_client_id')
