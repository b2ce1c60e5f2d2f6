"""audit checkpoints and the checkpoint signing key

Revision ID: t0002
Revises: t0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = 't0002'
down_revision = 't0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('checkpoint_keys',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('key_id', sa.String(length=16), nullable=False),
    sa.Column('public_key', sa.Text(), nullable=False),
    sa.Column('private_key_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_checkpoint_keys')),
    sa.UniqueConstraint('key_id', name=op.f('uq_checkpoint_keys_key_id'))
    )
    op.create_table('audit_checkpoints',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('chain_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('signature', sa.Text(), nullable=False),
    sa.Column('key_id', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['checkpoint_keys.key_id'], name=op.f('fk_audit_checkpoints_key_id_checkpoint_keys')),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_checkpoints'))
    )

    # Checkpoints are append-only for everyone, like audit_events: the database refuses UPDATE
    # and DELETE.
    op.execute("""
        CREATE FUNCTION audit_checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_checkpoints is append-only (% refused)', TG_OP;
        END $$;
    """)
    op.execute("""
        CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
        FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only();
    """)
    # A tenant upgraded in place by `magistrate migrate` runs this as its owner, whose default
    # privileges hand the app role UPDATE and DELETE on every new table: take them back here,
    # so the service role has INSERT and SELECT only (new tenants get the same from
    # APPEND_ONLY_TABLES when they are provisioned).
    op.execute("""
        DO $$
        DECLARE grantee_name text;
        BEGIN
            FOR grantee_name IN
                SELECT DISTINCT pg_get_userbyid(a.grantee)
                FROM pg_class c, aclexplode(c.relacl) a
                WHERE c.oid = 'audit_checkpoints'::regclass AND a.grantee <> c.relowner
                  AND a.grantee <> 0 AND a.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
            LOOP
                EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON audit_checkpoints FROM %I',
                               grantee_name);
            END LOOP;
            REVOKE UPDATE, DELETE, TRUNCATE ON audit_checkpoints FROM PUBLIC;
        END $$;
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_checkpoints_append_only ON audit_checkpoints")
    op.execute("DROP FUNCTION audit_checkpoints_append_only()")
    op.drop_table('audit_checkpoints')
    op.drop_table('checkpoint_keys')
