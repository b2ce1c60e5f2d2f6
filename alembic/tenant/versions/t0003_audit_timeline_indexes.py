"""audit timeline indexes

Revision ID: t0003
Revises: t0002
Create Date: 2026-11-25
"""

from alembic import op

revision = 't0003'
down_revision = 't0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_audit_events_event_type_seq', 'audit_events', ['event_type', 'seq'])
    op.create_index('ix_audit_events_actor_name_seq', 'audit_events', ['actor_name', 'seq'])
    op.create_index('ix_audit_events_occurred_at', 'audit_events', ['occurred_at'])


def downgrade() -> None:
    op.drop_index('ix_audit_events_occurred_at', table_name='audit_events')
    op.drop_index('ix_audit_events_actor_name_seq', table_name='audit_events')
    op.drop_index('ix_audit_events_event_type_seq', table_name='audit_events')
