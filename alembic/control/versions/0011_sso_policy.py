"""single sign-on policy per tenant (required, break-glass Owner, the provider to use); the
amr/acr values a provider's second factor is accepted by; sessions remember that the provider
did the second factor; ID and logout tokens (jti, nonce) are taken once

Revision ID: 0011_sso_policy
Revises: 0010_mcp_oauth
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0011_sso_policy'
down_revision = '0010_mcp_oauth'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('tenants', sa.Column('sso_required', sa.Boolean(),
                                       server_default=sa.text('false'), nullable=False))
    op.add_column('tenants', sa.Column('sso_break_glass_user_id', sa.BigInteger(),
                                       nullable=True))
    op.add_column('tenants', sa.Column('sso_provider_id', sa.BigInteger(), nullable=True))
    op.create_foreign_key(op.f('fk_tenants_sso_break_glass_user_id_users'), 'tenants',
                          'users', ['sso_break_glass_user_id'], ['id'], ondelete='SET NULL')
    op.create_foreign_key(op.f('fk_tenants_sso_provider_id_identity_providers'), 'tenants',
                          'identity_providers', ['sso_provider_id'], ['id'],
                          ondelete='SET NULL')
    op.add_column('identity_providers', sa.Column(
        'mfa_amr_values', postgresql.ARRAY(sa.String(length=40)),
        server_default=sa.text("'{}'"), nullable=False))
    op.add_column('identity_providers', sa.Column(
        'mfa_acr_values', postgresql.ARRAY(sa.String(length=200)),
        server_default=sa.text("'{}'"), nullable=False))
    op.add_column('web_sessions', sa.Column('mfa_by_provider', sa.Boolean(),
                                            server_default=sa.text('false'), nullable=False))
    op.create_table('sso_used_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_sso_used_tokens'))
    )
    op.create_index('ix_sso_used_tokens_expires_at', 'sso_used_tokens', ['expires_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_sso_used_tokens_expires_at', table_name='sso_used_tokens')
    op.drop_table('sso_used_tokens')
    op.drop_column('web_sessions', 'mfa_by_provider')
    op.drop_column('identity_providers', 'mfa_acr_values')
    op.drop_column('identity_providers', 'mfa_amr_values')
    op.drop_constraint(op.f('fk_tenants_sso_provider_id_identity_providers'), 'tenants',
                       type_='foreignkey')
    op.drop_constraint(op.f('fk_tenants_sso_break_glass_user_id_users'), 'tenants',
                       type_='foreignkey')
    op.drop_column('tenants', 'sso_provider_id')
    op.drop_column('tenants', 'sso_break_glass_user_id')
    op.drop_column('tenants', 'sso_required')
