"""audit retention and checkpoint webhook

Revision ID: t0004
Revises: t0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = 't0004'
down_revision = 't0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_settings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('webhook_url', sa.String(length=500), nullable=True),
    sa.Column('webhook_secret_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('retention_days', sa.Integer(), server_default=sa.text('396'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_settings'))
    )
    op.create_table('checkpoint_deliveries',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('last_error', sa.String(length=300), nullable=True),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_checkpoint_deliveries'))
    )
    # The only way rows leave the chain: this procedure, and only up to a signed checkpoint.
    op.execute("""
        CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE'
               AND current_setting('magistrate.audit_retention', true) = 'on' THEN
                RETURN OLD;
            END IF;
            RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP;
        END $$;
    """)
    op.execute("""
        CREATE FUNCTION prune_audit_events(upto_seq bigint) RETURNS bigint
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        DECLARE
            removed bigint;
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM audit_checkpoints WHERE seq = upto_seq) THEN
                RAISE EXCEPTION 'pruning refused: no signed checkpoint at seq %', upto_seq;
            END IF;
            PERFORM set_config('magistrate.audit_retention', 'on', true);
            DELETE FROM audit_events WHERE seq <= upto_seq;
            GET DIAGNOSTICS removed = ROW_COUNT;
            PERFORM set_config('magistrate.audit_retention', 'off', true);
            RETURN removed;
        END $$;
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION prune_audit_events(bigint)")
    op.execute("""
        CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP;
        END $$;
    """)
    op.drop_table('checkpoint_deliveries')
    op.drop_table('audit_settings')
