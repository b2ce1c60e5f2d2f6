"""tenancy keys and jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('db_servers',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('admin_url_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_db_servers')),
    sa.UniqueConstraint('name', name=op.f('uq_db_servers_name'))
    )
    op.create_table('jobs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('kind', sa.String(length=50), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('state', sa.String(length=20), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('tenant_id', sa.BigInteger(), nullable=True),
    sa.Column('created_by', sa.BigInteger(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('max_attempts', sa.Integer(), server_default=sa.text('5'), nullable=False),
    sa.Column('lease_owner', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('fencing_token', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('progress', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('progress_total', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('progress_note', sa.String(length=300), nullable=True),
    sa.Column('result', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("state IN ('pending', 'dispatched', 'running', 'succeeded', 'failed')", name=op.f('ck_jobs_state_known')),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_jobs_created_by_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_jobs_idempotency_key'))
    )
    op.create_index('ix_jobs_state', 'jobs', ['state'], unique=False)
    op.create_index(op.f('ix_jobs_tenant_id'), 'jobs', ['tenant_id'], unique=False)
    op.create_table('tenant_tombstones',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('tenant_id', sa.BigInteger(), nullable=False),
    sa.Column('slug', sa.String(length=63), nullable=False),
    sa.Column('deleted_by', sa.BigInteger(), nullable=True),
    sa.Column('deleted_by_email', sa.String(length=320), nullable=True),
    sa.Column('reason', sa.String(length=1000), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['deleted_by'], ['users.id'], name=op.f('fk_tenant_tombstones_deleted_by_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenant_tombstones')),
    sa.UniqueConstraint('tenant_id', name=op.f('uq_tenant_tombstones_tenant_id'))
    )
    op.create_table('tenant_keys',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('tenant_id', sa.BigInteger(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=20), nullable=False),
    sa.Column('key_ref', sa.String(length=500), nullable=False),
    sa.Column('wrapped_dek', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_tenant_keys_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenant_keys')),
    sa.UniqueConstraint('tenant_id', 'version', name='uq_tenant_keys_version')
    )
    op.add_column('tenants', sa.Column('db_server_id', sa.BigInteger(), nullable=True))
    op.add_column('tenants', sa.Column('key_provider', sa.String(length=20), server_default=sa.text("'local'"), nullable=False))
    op.add_column('tenants', sa.Column('key_ref', sa.String(length=500), server_default=sa.text("''"), nullable=False))
    op.add_column('tenants', sa.Column('owner_password_sealed', sa.LargeBinary(), nullable=True))
    op.add_column('tenants', sa.Column('app_password_sealed', sa.LargeBinary(), nullable=True))
    op.add_column('tenants', sa.Column('suspended_reason', sa.String(length=500), nullable=True))
    op.add_column('tenants', sa.Column('created_by', sa.BigInteger(), nullable=True))
    op.add_column('tenants', sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False))
    op.create_index(op.f('ix_tenants_db_server_id'), 'tenants', ['db_server_id'], unique=False)
    op.create_foreign_key(op.f('fk_tenants_db_server_id_db_servers'), 'tenants', 'db_servers', ['db_server_id'], ['id'])
    op.create_foreign_key(op.f('fk_tenants_created_by_users'), 'tenants', 'users', ['created_by'], ['id'], ondelete='SET NULL')
    op.create_check_constraint(op.f('ck_tenants_slug_format'), 'tenants', "slug ~ '^[a-z][a-z0-9-]{1,62}$'")


def downgrade() -> None:
    op.drop_constraint(op.f('ck_tenants_slug_format'), 'tenants', type_='check')
    op.drop_constraint(op.f('fk_tenants_created_by_users'), 'tenants', type_='foreignkey')
    op.drop_constraint(op.f('fk_tenants_db_server_id_db_servers'), 'tenants', type_='foreignkey')
    op.drop_index(op.f('ix_tenants_db_server_id'), table_name='tenants')
    op.drop_column('tenants', 'updated_at')
    op.drop_column('tenants', 'created_by')
    op.drop_column('tenants', 'suspended_reason')
    op.drop_column('tenants', 'app_password_sealed')
    op.drop_column('tenants', 'owner_password_sealed')
    op.drop_column('tenants', 'key_ref')
    op.drop_column('tenants', 'key_provider')
    op.drop_column('tenants', 'db_server_id')
    op.drop_table('tenant_keys')
    op.drop_table('tenant_tombstones')
    op.drop_index(op.f('ix_jobs_tenant_id'), table_name='jobs')
    op.drop_index('ix_jobs_state', table_name='jobs')
    op.drop_table('jobs')
    op.drop_table('db_servers')
