"""governed MCP: the arguments of a tool call that waits for approval, sealed (pii) on its
approval request, so approvers see what they approve; completions in the call history

Revision ID: t0017_mcp_args
Revises: t0016_mcp_upstream_oauth
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = 't0017_mcp_args'
down_revision = 't0016_mcp_upstream_oauth'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('approval_requests',
                  sa.Column('arguments_sealed', sa.LargeBinary(), nullable=True))
    op.drop_constraint(op.f('ck_mcp_calls_kind'), 'mcp_calls', type_='check')
    op.create_check_constraint(op.f('ck_mcp_calls_kind'), 'mcp_calls',
                               "kind IN ('tool', 'resource', 'prompt', 'completion')")


def downgrade() -> None:
    op.execute("DELETE FROM mcp_calls WHERE kind = 'completion'")
    op.drop_constraint(op.f('ck_mcp_calls_kind'), 'mcp_calls', type_='check')
    op.create_check_constraint(op.f('ck_mcp_calls_kind'), 'mcp_calls',
                               "kind IN ('tool', 'resource', 'prompt')")
    op.drop_column('approval_requests', 'arguments_sealed')
