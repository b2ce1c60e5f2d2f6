"""the gateway: settings, routes, prices, spend, calls

Revision ID: t0005
Revises: t0004
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = 't0005'
down_revision = 't0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('gateway_settings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('redaction_profile', sa.String(length=20), server_default='standard', nullable=False),
    sa.Column('custom_detectors', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('custom_terms_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('custom_patterns', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('monthly_cap_micros', sa.BigInteger(), server_default=sa.text('100000000'), nullable=False),
    sa.Column('requests_per_minute', sa.Integer(), server_default=sa.text('600'), nullable=False),
    sa.Column('tokens_per_minute', sa.Integer(), server_default=sa.text('400000'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_gateway_settings'))
    )
    op.create_table('gateway_routes',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('model_name', sa.String(length=100), nullable=False),
    sa.Column('provider', sa.String(length=20), nullable=False),
    sa.Column('provider_model', sa.String(length=200), nullable=False),
    sa.Column('endpoint', sa.String(length=500), nullable=True),
    sa.Column('api_version', sa.String(length=40), nullable=True),
    sa.Column('region', sa.String(length=40), nullable=True),
    sa.Column('credential_id', sa.BigInteger(), nullable=True),
    sa.Column('timeout_seconds', sa.Float(), server_default=sa.text('60'), nullable=False),
    sa.Column('fallbacks', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('allowed', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['credential_id'], ['provider_credentials.id'], name=op.f('fk_gateway_routes_credential_id_provider_credentials'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_gateway_routes')),
    sa.UniqueConstraint('model_name', name=op.f('uq_gateway_routes_model_name'))
    )
    op.create_table('gateway_prices',
    sa.Column('provider_model', sa.String(length=200), nullable=False),
    sa.Column('input_micros_per_mtok', sa.BigInteger(), nullable=False),
    sa.Column('output_micros_per_mtok', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('provider_model', name=op.f('pk_gateway_prices'))
    )
    op.create_table('gateway_spend_months',
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('spent_micros', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('reserved_micros', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.CheckConstraint('spent_micros >= 0 AND reserved_micros >= 0', name=op.f('ck_gateway_spend_months_not_negative')),
    sa.PrimaryKeyConstraint('month', name=op.f('pk_gateway_spend_months'))
    )
    op.create_table('gateway_calls',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('api_key_id', sa.String(length=64), nullable=True),
    sa.Column('model_name', sa.String(length=100), nullable=False),
    sa.Column('provider', sa.String(length=20), nullable=True),
    sa.Column('provider_model', sa.String(length=200), nullable=True),
    sa.Column('endpoint_kind', sa.String(length=20), nullable=False),
    sa.Column('stream', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('reserved_micros', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('cost_micros', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('tokens_in', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('tokens_out', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('latency_ms', sa.Integer(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('redactions', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('error', sa.String(length=300), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_gateway_calls'))
    )
    op.create_index('ix_gateway_calls_created_at', 'gateway_calls', ['created_at'], unique=False)
    op.create_index('ix_gateway_calls_status_reserved', 'gateway_calls', ['status'], unique=False, postgresql_where=sa.text("status = 'reserved'"))


def downgrade() -> None:
    op.drop_index('ix_gateway_calls_status_reserved', table_name='gateway_calls', postgresql_where=sa.text("status = 'reserved'"))
    op.drop_index('ix_gateway_calls_created_at', table_name='gateway_calls')
    op.drop_table('gateway_calls')
    op.drop_table('gateway_spend_months')
    op.drop_table('gateway_prices')
    op.drop_table('gateway_routes')
    op.drop_table('gateway_settings')
