"""the recommendation gate: tasks, analyses, panel votes, verdicts

Revision ID: t0007
Revises: t0006
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = 't0007'
down_revision = 't0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tasks',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('description_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('team', sa.String(length=100), server_default='', nullable=False),
    sa.Column('tags', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('signals', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('created_by', sa.String(length=320), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks'))
    )
    op.create_table('recommendation_settings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('panel_models', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('architect_model', sa.String(length=100), nullable=True),
    sa.Column('deliberator_model', sa.String(length=100), nullable=True),
    sa.Column('min_cost_benefit', sa.Integer(), server_default=sa.text('7'), nullable=False),
    sa.Column('max_customer_risk', sa.Integer(), server_default=sa.text('3'), nullable=False),
    sa.Column('max_human_sensitivity', sa.Integer(), server_default=sa.text('4'), nullable=False),
    sa.Column('min_compliance', sa.Integer(), server_default=sa.text('7'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recommendation_settings'))
    )
    op.create_table('recommendation_runs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('task_id', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=20), server_default='queued', nullable=False),
    sa.Column('panel_models', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('architect_model', sa.String(length=100), nullable=True),
    sa.Column('deliberator_model', sa.String(length=100), nullable=True),
    sa.Column('thresholds', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('analysis_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('analysis_error', sa.String(length=300), nullable=True),
    sa.Column('synthesis_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('synthesis_error', sa.String(length=300), nullable=True),
    sa.Column('mode', sa.String(length=20), nullable=True),
    sa.Column('verdict', sa.String(length=20), nullable=True),
    sa.Column('reasons', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('heuristic', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('requested_by', sa.String(length=320), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_recommendation_runs_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recommendation_runs'))
    )
    op.create_index('ix_recommendation_runs_task_id_id', 'recommendation_runs', ['task_id', 'id'], unique=False)
    op.create_table('panel_votes',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('model_name', sa.String(length=100), nullable=False),
    sa.Column('valid', sa.Boolean(), nullable=False),
    sa.Column('abstention', sa.String(length=20), nullable=True),
    sa.Column('abstention_detail', sa.String(length=300), nullable=True),
    sa.Column('cost_benefit', sa.Integer(), nullable=True),
    sa.Column('human_sensitivity', sa.Integer(), nullable=True),
    sa.Column('customer_risk', sa.Integer(), nullable=True),
    sa.Column('compliance', sa.Integer(), nullable=True),
    sa.Column('rationales_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('latency_ms', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['recommendation_runs.id'], name=op.f('fk_panel_votes_run_id_recommendation_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_panel_votes')),
    sa.UniqueConstraint('run_id', 'model_name', name='uq_panel_votes_run_id_model_name')
    )


def downgrade() -> None:
    op.drop_table('panel_votes')
    op.drop_index('ix_recommendation_runs_task_id_id', table_name='recommendation_runs')
    op.drop_table('recommendation_runs')
    op.drop_table('recommendation_settings')
    op.drop_table('tasks')
