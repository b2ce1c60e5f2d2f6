"""single sign-on: identity providers, external identities, sign-ins in flight, the SSO policy;
sessions and memberships learn which provider they came from; SCIM tokens, groups and
provisioned users

Revision ID: 0006_identity
Revises: 0005_platform_checkpoints
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0006_identity'
down_revision = '0005_platform_checkpoints'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('identity_providers',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('discovery_url', sa.String(length=1000), nullable=False),
    sa.Column('issuer', sa.String(length=1000), nullable=False),
    sa.Column('client_id', sa.String(length=500), nullable=False),
    sa.Column('client_secret_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('allowed_domains', postgresql.ARRAY(sa.String(length=253)), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('create_accounts', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('groups_claim', sa.String(length=100), nullable=True),
    sa.Column('group_roles', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('trust_idp_mfa', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_by', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_identity_providers_created_by_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_identity_providers')),
    sa.UniqueConstraint('name', name=op.f('uq_identity_providers_name'))
    )
    op.create_table('sso_policy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sso_required', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('break_glass_user_id', sa.BigInteger(), nullable=True),
    sa.CheckConstraint('id = 1', name=op.f('ck_sso_policy_single_row')),
    sa.ForeignKeyConstraint(['break_glass_user_id'], ['users.id'], name=op.f('fk_sso_policy_break_glass_user_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sso_policy'))
    )
    op.create_table('external_identities',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('provider_id', sa.BigInteger(), nullable=False),
    sa.Column('issuer', sa.String(length=1000), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('groups', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_sign_in_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['provider_id'], ['identity_providers.id'], name=op.f('fk_external_identities_provider_id_identity_providers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_external_identities_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_external_identities')),
    sa.UniqueConstraint('issuer', 'subject', name='uq_external_identities_sub')
    )
    op.create_index(op.f('ix_external_identities_provider_id'), 'external_identities', ['provider_id'], unique=False)
    op.create_index(op.f('ix_external_identities_user_id'), 'external_identities', ['user_id'], unique=False)
    op.create_table('sso_authorizations',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('state_hash', sa.String(length=64), nullable=False),
    sa.Column('browser_hash', sa.String(length=64), nullable=False),
    sa.Column('provider_id', sa.BigInteger(), nullable=False),
    sa.Column('nonce', sa.String(length=100), nullable=False),
    sa.Column('code_verifier_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('next_path', sa.String(length=2000), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('link_user_id', sa.BigInteger(), nullable=True),
    sa.Column('link_claims', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.ForeignKeyConstraint(['link_user_id'], ['users.id'], name=op.f('fk_sso_authorizations_link_user_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['provider_id'], ['identity_providers.id'], name=op.f('fk_sso_authorizations_provider_id_identity_providers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sso_authorizations')),
    sa.UniqueConstraint('state_hash', name=op.f('uq_sso_authorizations_state_hash'))
    )
    op.execute("INSERT INTO sso_policy (id, sso_required) VALUES (1, false)")
    op.add_column('memberships', sa.Column('sso_provider_id', sa.BigInteger(), nullable=True))
    op.create_foreign_key(op.f('fk_memberships_sso_provider_id_identity_providers'), 'memberships', 'identity_providers', ['sso_provider_id'], ['id'], ondelete='SET NULL')
    op.add_column('web_sessions', sa.Column('sso_provider_id', sa.BigInteger(), nullable=True))
    op.add_column('web_sessions', sa.Column('sso_subject', sa.String(length=255), nullable=True))
    op.add_column('web_sessions', sa.Column('sso_sid', sa.String(length=255), nullable=True))
    op.create_index('ix_web_sessions_sso', 'web_sessions', ['sso_provider_id', 'sso_subject'], unique=False)
    op.create_foreign_key(op.f('fk_web_sessions_sso_provider_id_identity_providers'), 'web_sessions', 'identity_providers', ['sso_provider_id'], ['id'], ondelete='SET NULL')
    op.create_table('scim_groups',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('provider_id', sa.BigInteger(), nullable=False),
    sa.Column('display_name', sa.String(length=255), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['provider_id'], ['identity_providers.id'], name=op.f('fk_scim_groups_provider_id_identity_providers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scim_groups')),
    sa.UniqueConstraint('provider_id', 'display_name', name='uq_scim_groups_name')
    )
    op.create_table('scim_tokens',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('provider_id', sa.BigInteger(), nullable=False),
    sa.Column('label', sa.String(length=100), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('scopes', postgresql.ARRAY(sa.String(length=40)), server_default=sa.text("'{scim}'"), nullable=False),
    sa.Column('created_by', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_scim_tokens_created_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['provider_id'], ['identity_providers.id'], name=op.f('fk_scim_tokens_provider_id_identity_providers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scim_tokens')),
    sa.UniqueConstraint('prefix', name=op.f('uq_scim_tokens_prefix'))
    )
    op.create_index(op.f('ix_scim_tokens_provider_id'), 'scim_tokens', ['provider_id'], unique=False)
    op.create_table('scim_users',
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('provider_id', sa.BigInteger(), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=True),
    sa.Column('user_name', sa.String(length=320), nullable=False),
    sa.Column('emails', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['provider_id'], ['identity_providers.id'], name=op.f('fk_scim_users_provider_id_identity_providers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_scim_users_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_scim_users')),
    sa.UniqueConstraint('provider_id', 'user_name', name='uq_scim_users_name')
    )
    op.create_index(op.f('ix_scim_users_provider_id'), 'scim_users', ['provider_id'], unique=False)
    op.create_table('scim_group_members',
    sa.Column('group_id', sa.BigInteger(), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['scim_groups.id'], name=op.f('fk_scim_group_members_group_id_scim_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_scim_group_members_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_id', 'user_id', name=op.f('pk_scim_group_members'))
    )
    op.create_index(op.f('ix_scim_group_members_user_id'), 'scim_group_members', ['user_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_scim_group_members_user_id'), table_name='scim_group_members')
    op.drop_table('scim_group_members')
    op.drop_index(op.f('ix_scim_users_provider_id'), table_name='scim_users')
    op.drop_table('scim_users')
    op.drop_index(op.f('ix_scim_tokens_provider_id'), table_name='scim_tokens')
    op.drop_table('scim_tokens')
    op.drop_table('scim_groups')
    op.drop_constraint(op.f('fk_web_sessions_sso_provider_id_identity_providers'), 'web_sessions', type_='foreignkey')
    op.drop_index('ix_web_sessions_sso', table_name='web_sessions')
    op.drop_column('web_sessions', 'sso_sid')
    op.drop_column('web_sessions', 'sso_subject')
    op.drop_column('web_sessions', 'sso_provider_id')
    op.drop_constraint(op.f('fk_memberships_sso_provider_id_identity_providers'), 'memberships', type_='foreignkey')
    op.drop_column('memberships', 'sso_provider_id')
    op.drop_table('sso_authorizations')
    op.drop_index(op.f('ix_external_identities_user_id'), table_name='external_identities')
    op.drop_index(op.f('ix_external_identities_provider_id'), table_name='external_identities')
    op.drop_table('external_identities')
    op.drop_table('sso_policy')
    op.drop_table('identity_providers')
