"""minimization, signals and personas: observations capped at 240 characters by a CHECK,
sources and grants, imported signals, personas, and candidate tasks found by clustering

Revision ID: t0010
Revises: t0009
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = 't0010'
down_revision = 't0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('minimization_settings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stakeholder_extraction', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('k_anonymity', sa.Integer(), server_default=sa.text('3'), nullable=False),
    sa.Column('retention_days', sa.Integer(), server_default=sa.text('396'), nullable=False),
    sa.Column('pseudonym_key_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('k_anonymity >= 3', name=op.f('ck_minimization_settings_k_at_least_3')),
    sa.CheckConstraint('retention_days BETWEEN 1 AND 3660', name=op.f('ck_minimization_settings_retention_range')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_minimization_settings'))
    )
    op.create_table('personas',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('teams', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('source_ids', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('created_by', sa.String(length=320), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_personas')),
    sa.UniqueConstraint('name', name=op.f('uq_personas_name'))
    )
    op.create_table('sources',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('granted', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('granted_by', sa.String(length=320), nullable=True),
    sa.Column('granted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('refused_count', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("kind IN ('cloudwatch', 'jira', 'github_actions', 'logs')", name=op.f('ck_sources_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sources')),
    sa.UniqueConstraint('name', name=op.f('uq_sources_name'))
    )
    op.create_table('persona_assignments',
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('persona_id', sa.BigInteger(), nullable=False),
    sa.Column('assigned_by', sa.String(length=320), nullable=True),
    sa.Column('assigned_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['persona_id'], ['personas.id'], name=op.f('fk_persona_assignments_persona_id_personas'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'persona_id', name=op.f('pk_persona_assignments'))
    )
    op.create_table('signal_imports',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('source_id', sa.BigInteger(), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('file_format', sa.String(length=10), nullable=False),
    sa.Column('state', sa.String(length=20), server_default='running', nullable=False),
    sa.Column('bytes_total', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('bytes_read', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('rows_imported', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('rows_duplicate', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('rows_rejected', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('rejects', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('error', sa.String(length=500), nullable=True),
    sa.Column('created_by', sa.String(length=320), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['source_id'], ['sources.id'], name=op.f('fk_signal_imports_source_id_sources'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signal_imports'))
    )
    op.create_table('signals',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('source_id', sa.BigInteger(), nullable=False),
    sa.Column('import_id', sa.BigInteger(), nullable=True),
    sa.Column('external_id', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('title_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('template', sa.String(length=300), nullable=False),
    sa.Column('team', sa.String(length=100), server_default='', nullable=False),
    sa.Column('person_ref', sa.String(length=32), nullable=True),
    sa.Column('outcome', sa.String(length=50), nullable=True),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cluster_key', sa.String(length=64), nullable=True),
    sa.Column('imported_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['import_id'], ['signal_imports.id'], name=op.f('fk_signals_import_id_signal_imports'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['source_id'], ['sources.id'], name=op.f('fk_signals_source_id_sources'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signals')),
    sa.UniqueConstraint('source_id', 'external_id', name='uq_signals_source_id_external_id')
    )
    op.create_index('ix_signals_cluster_key', 'signals', ['cluster_key'], unique=False)
    op.create_index('ix_signals_occurred_at', 'signals', ['occurred_at'], unique=False)
    op.create_index('ix_signals_team', 'signals', ['team'], unique=False)
    op.create_table('observations',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('source_id', sa.BigInteger(), nullable=False),
    sa.Column('signal_id', sa.BigInteger(), nullable=True),
    sa.Column('task_id', sa.BigInteger(), nullable=True),
    sa.Column('team', sa.String(length=100), server_default='', nullable=False),
    sa.Column('summary_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('dropped_chars', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('extractor', sa.String(length=50), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('dropped_chars >= 0', name=op.f('ck_observations_dropped_not_negative')),
    sa.CheckConstraint('octet_length(summary_sealed) <= 994', name=op.f('ck_observations_summary_at_most_240_chars')),
    sa.ForeignKeyConstraint(['signal_id'], ['signals.id'], name=op.f('fk_observations_signal_id_signals'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['source_id'], ['sources.id'], name=op.f('fk_observations_source_id_sources'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_observations_task_id_tasks'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_observations'))
    )
    op.create_index('ix_observations_created_at', 'observations', ['created_at'], unique=False)
    op.create_index('ix_observations_team', 'observations', ['team'], unique=False)
    op.add_column('tasks', sa.Column('cluster_key', sa.String(length=64), nullable=True))
    op.add_column('tasks', sa.Column('confirmed_by', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False))
    op.create_unique_constraint(op.f('uq_tasks_cluster_key'), 'tasks', ['cluster_key'])


def downgrade() -> None:
    op.drop_constraint(op.f('uq_tasks_cluster_key'), 'tasks', type_='unique')
    op.drop_column('tasks', 'confirmed_by')
    op.drop_column('tasks', 'cluster_key')
    op.drop_index('ix_observations_team', table_name='observations')
    op.drop_index('ix_observations_created_at', table_name='observations')
    op.drop_table('observations')
    op.drop_index('ix_signals_team', table_name='signals')
    op.drop_index('ix_signals_occurred_at', table_name='signals')
    op.drop_index('ix_signals_cluster_key', table_name='signals')
    op.drop_table('signals')
    op.drop_table('signal_imports')
    op.drop_table('persona_assignments')
    op.drop_table('sources')
    op.drop_table('personas')
    op.drop_table('minimization_settings')
