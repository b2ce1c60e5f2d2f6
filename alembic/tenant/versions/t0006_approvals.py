"""approval gates: action classes, requests, decisions

Revision ID: t0006
Revises: t0005
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = 't0006'
down_revision = 't0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('action_classes',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.String(length=500), server_default='', nullable=False),
    sa.Column('restricted', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('approver_role', sa.String(length=20), server_default='Approver', nullable=False),
    sa.Column('expiry_seconds', sa.Integer(), server_default=sa.text('86400'), nullable=False),
    sa.Column('approvals_needed', sa.Integer(), server_default=sa.text('1'), nullable=False),
    sa.Column('execution_url', sa.String(length=500), nullable=True),
    sa.Column('execution_secret_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('approvals_needed BETWEEN 1 AND 10', name=op.f('ck_action_classes_approvals_needed')),
    sa.CheckConstraint('expiry_seconds BETWEEN 60 AND 2592000', name=op.f('ck_action_classes_expiry_seconds')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_action_classes')),
    sa.UniqueConstraint('name', name=op.f('uq_action_classes_name'))
    )
    op.create_table('approval_requests',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('action_class_id', sa.BigInteger(), nullable=False),
    sa.Column('action', sa.String(length=100), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('via', sa.String(length=20), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('restricted', sa.Boolean(), nullable=False),
    sa.Column('approver_role', sa.String(length=20), nullable=False),
    sa.Column('approvals_needed', sa.Integer(), nullable=False),
    sa.Column('expiry_seconds', sa.Integer(), nullable=False),
    sa.Column('requested_by_type', sa.String(length=20), nullable=False),
    sa.Column('requested_by_id', sa.String(length=64), nullable=True),
    sa.Column('requested_by_name', sa.String(length=320), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('executed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('executed_via', sa.String(length=20), nullable=True),
    sa.Column('executed_by', sa.String(length=320), nullable=True),
    sa.CheckConstraint("state IN ('pending', 'approved', 'rejected', 'executed')", name=op.f('ck_approval_requests_state')),
    sa.CheckConstraint("(state = 'executed') = (executed_at IS NOT NULL)", name=op.f('ck_approval_requests_executed')),
    sa.ForeignKeyConstraint(['action_class_id'], ['action_classes.id'], name=op.f('fk_approval_requests_action_class_id_action_classes'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approval_requests'))
    )
    op.create_index('ix_approval_requests_state_expires_at', 'approval_requests', ['state', 'expires_at'], unique=False)
    op.create_index('ix_approval_requests_created_at', 'approval_requests', ['created_at'], unique=False)
    op.create_table('approval_decisions',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('request_id', sa.Uuid(), nullable=False),
    sa.Column('approver_id', sa.String(length=64), nullable=False),
    sa.Column('approver_name', sa.String(length=320), nullable=True),
    sa.Column('approver_role', sa.String(length=20), nullable=True),
    sa.Column('approve', sa.Boolean(), nullable=False),
    sa.Column('comment_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['approval_requests.id'], name=op.f('fk_approval_decisions_request_id_approval_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approval_decisions')),
    sa.UniqueConstraint('request_id', 'approver_id', name='uq_approval_decisions_approver')
    )
    op.create_table('approval_outbox',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('request_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('recipients', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('last_error', sa.String(length=300), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'sent', 'skipped')", name=op.f('ck_approval_outbox_status')),
    sa.ForeignKeyConstraint(['request_id'], ['approval_requests.id'], name=op.f('fk_approval_outbox_request_id_approval_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approval_outbox')),
    sa.UniqueConstraint('request_id', 'kind', name='uq_approval_outbox_request_kind')
    )
    op.create_index('ix_approval_outbox_due', 'approval_outbox', ['next_attempt_at'], unique=False, postgresql_where=sa.text("status = 'pending'"))
    op.create_table('approval_settings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('webhook_url', sa.String(length=500), nullable=True),
    sa.Column('webhook_secret_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('email_approvers', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approval_settings'))
    )


def downgrade() -> None:
    op.drop_table('approval_settings')
    op.drop_index('ix_approval_outbox_due', table_name='approval_outbox',
                  postgresql_where=sa.text("status = 'pending'"))
    op.drop_table('approval_outbox')
    op.drop_table('approval_decisions')
    op.drop_index('ix_approval_requests_created_at', table_name='approval_requests')
    op.drop_index('ix_approval_requests_state_expires_at', table_name='approval_requests')
    op.drop_table('approval_requests')
    op.drop_table('action_classes')
