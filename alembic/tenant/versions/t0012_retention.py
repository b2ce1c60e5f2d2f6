"""retention guard: the audit chain loses rows only as a prefix ending at a checkpoint, checked
by the database for every role, with no switch to turn the check off

Before: ``audit_events``' trigger let a DELETE through whenever the session variable
``magistrate.audit_retention`` was ``on`` (any role could set it), and ``prune_audit_events``
was SECURITY DEFINER with EXECUTE granted to PUBLIC (so the app role could prune). TRUNCATE
fired no trigger at all.

After:
- UPDATE and TRUNCATE of ``audit_events`` and ``audit_checkpoints`` are refused for everyone;
  DELETE of ``audit_checkpoints`` too (t0002);
- a DELETE of ``audit_events`` passes only when, once the statement is done, what it removed is
  a prefix of the chain ending exactly at a checkpoint whose ``chain_hash`` is the removed
  event's, and the newest event stays (``audit_events_retention_cut``, a statement trigger over
  the removed rows; appends continue from the newest event, so removing it would restart the
  sequence at 1); the row trigger refuses any row above the newest checkpoint at once;
- ``prune_audit_events`` runs with its caller's rights (SECURITY INVOKER) and nobody but the
  owner may call it; the app role has no DELETE on ``audit_events`` anyway;
- no function of the schema is executable by PUBLIC, now or later (default privileges);
- the app role keeps only SELECT on ``alembic_version``.

What the database cannot do: verify the checkpoint's Ed25519 signature (stock Postgres has no
Ed25519). The owner's retention path checks it in Python before it cuts
(tenant_runtime/audit_retention.py); the database checks that the checkpoint row exists and
matches the chain. And the owner owns the schema: it can still drop the trigger, as it must be
able to run migrations; its credentials are held by the control plane only.

Revision ID: t0012_retention
Revises: t0011
Create Date: 2026-12-06
"""

from alembic import op

revision = 't0012_retention'
down_revision = 't0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger
        LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
        BEGIN
            -- a row at or below a checkpoint may go; audit_events_retention_cut then checks
            -- that the whole statement removed a prefix ending at a matching checkpoint
            IF TG_OP = 'DELETE'
               AND OLD.seq <= (SELECT max(seq) FROM audit_checkpoints) THEN
                RETURN OLD;
            END IF;
            RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP;
        END $$;
    """)
    op.execute("""
        CREATE FUNCTION audit_events_retention_cut() RETURNS trigger
        LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
        DECLARE
            cut bigint;
            cut_hash text;
        BEGIN
            SELECT seq, chain_hash INTO cut, cut_hash FROM removed ORDER BY seq DESC LIMIT 1;
            IF cut IS NULL THEN
                RETURN NULL;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM audit_checkpoints
                           WHERE seq = cut AND chain_hash = cut_hash) THEN
                RAISE EXCEPTION 'audit_events is append-only (DELETE refused): a retention cut '
                                'must end at a signed checkpoint, and seq % is not one', cut;
            END IF;
            IF EXISTS (SELECT 1 FROM audit_events WHERE seq < cut) THEN
                RAISE EXCEPTION 'audit_events is append-only (DELETE refused): a retention cut '
                                'removes every event up to its checkpoint at seq %', cut;
            END IF;
            -- the next event continues from the newest one: without it, seq would restart at 1
            IF NOT EXISTS (SELECT 1 FROM audit_events WHERE seq > cut) THEN
                RAISE EXCEPTION 'audit_events is append-only (DELETE refused): a retention cut '
                                'keeps the newest event, and seq % is the newest', cut;
            END IF;
            RETURN NULL;
        END $$;
    """)
    op.execute("""
        CREATE TRIGGER audit_events_retention_cut AFTER DELETE ON audit_events
        REFERENCING OLD TABLE AS removed
        FOR EACH STATEMENT EXECUTE FUNCTION audit_events_retention_cut();
    """)
    op.execute("""
        CREATE FUNCTION audit_truncate_refused() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only (TRUNCATE refused)', TG_TABLE_NAME;
        END $$;
    """)
    for table in ("audit_events", "audit_checkpoints"):
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_truncate_refused()")
    op.execute("DROP FUNCTION prune_audit_events(bigint)")
    op.execute("""
        CREATE FUNCTION prune_audit_events(upto_seq bigint) RETURNS bigint
        LANGUAGE plpgsql SECURITY INVOKER SET search_path = public, pg_temp AS $$
        DECLARE
            removed bigint;
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM audit_checkpoints WHERE seq = upto_seq) THEN
                RAISE EXCEPTION 'pruning refused: no signed checkpoint at seq %', upto_seq;
            END IF;
            IF EXISTS (SELECT 1 FROM audit_events e JOIN audit_checkpoints c USING (seq)
                       WHERE e.seq = upto_seq AND e.chain_hash <> c.chain_hash) THEN
                RAISE EXCEPTION 'pruning refused: the checkpoint at seq % does not match the '
                                'chain', upto_seq;
            END IF;
            DELETE FROM audit_events WHERE seq <= upto_seq;
            GET DIAGNOSTICS removed = ROW_COUNT;
            RETURN removed;
        END $$;
    """)
    # nobody but the owner calls a function of this schema; trigger functions fire regardless
    # (EXECUTE is checked when a trigger is created, not when it fires)
    op.execute("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC")
    op.execute("ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC")
    # migrations' bookkeeping is the owner's: anyone else keeps SELECT at most
    op.execute("""
        DO $$
        DECLARE grantee_name text;
        BEGIN
            FOR grantee_name IN
                SELECT DISTINCT pg_get_userbyid(a.grantee)
                FROM pg_class c, aclexplode(c.relacl) a
                WHERE c.oid = 'alembic_version'::regclass AND a.grantee <> c.relowner
                  AND a.grantee <> 0 AND a.privilege_type <> 'SELECT'
            LOOP
                EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER '
                               'ON alembic_version FROM %I', grantee_name);
            END LOOP;
            REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON alembic_version
                FROM PUBLIC;
        END $$;
    """)


def downgrade() -> None:
    op.execute("ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO PUBLIC")
    for table in ("audit_events", "audit_checkpoints"):
        op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
    op.execute("DROP FUNCTION audit_truncate_refused()")
    op.execute("DROP TRIGGER audit_events_retention_cut ON audit_events")
    op.execute("DROP FUNCTION audit_events_retention_cut()")
    op.execute("DROP FUNCTION prune_audit_events(bigint)")
    # t0004's definitions, as they were
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
