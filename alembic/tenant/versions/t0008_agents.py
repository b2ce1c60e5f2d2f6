"""the drive layer: agents, their phases and shadow runs

Revision ID: t0008
Revises: t0007
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = 't0008'
down_revision = 't0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('agents',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('task_id', sa.BigInteger(), nullable=True),
    sa.Column('phase', sa.String(length=20), server_default='off', nullable=False),
    sa.Column('tools', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('credential_id', sa.BigInteger(), nullable=True),
    sa.Column('pending_request_id', sa.String(length=36), nullable=True),
    sa.Column('created_by', sa.String(length=320), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('phase_changed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("phase IN ('off', 'shadow', 'assist', 'autonomous')", name=op.f('ck_agents_phase')),
    sa.ForeignKeyConstraint(['credential_id'], ['provider_credentials.id'], name=op.f('fk_agents_credential_id_provider_credentials'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agents')),
    sa.UniqueConstraint('name', name=op.f('uq_agents_name'))
    )
    op.create_table('shadow_runs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('agent_id', sa.BigInteger(), nullable=False),
    sa.Column('phase', sa.String(length=20), nullable=False),
    sa.Column('proposed_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('actual_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('agreed', sa.Boolean(), nullable=False),
    sa.Column('ground_truth_score', sa.Float(), nullable=True),
    sa.Column('recorded_by', sa.String(length=320), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('ground_truth_score IS NULL OR (ground_truth_score >= 0 AND ground_truth_score <= 1)', name=op.f('ck_shadow_runs_score_range')),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_shadow_runs_agent_id_agents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_shadow_runs'))
    )
    op.create_index('ix_shadow_runs_agent_phase', 'shadow_runs', ['agent_id', 'phase'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_shadow_runs_agent_phase', table_name='shadow_runs')
    op.drop_table('shadow_runs')
    op.drop_table('agents')
