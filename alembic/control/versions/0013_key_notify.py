"""keys: every change that can refuse or change an API key's authority notifies the gateway

Triggers on the tables the gateway's key check reads (api_keys, tenants, users, memberships,
tenant_keys) send ``pg_notify('magistrate_auth', '<kind>:<id>')`` for each row inserted,
updated or deleted, and ``'*'`` on TRUNCATE, so each web process's key cache
(control_plane/tenancy/key_cache.py) drops what changed, whoever changed it: the app, the CLI,
or SQL typed straight into the database. An update of nothing but ``api_keys.last_used_at``
(the gateway's own once-a-minute write) notifies nobody.

Revision ID: 0013_key_notify
Revises: 0012_backup_restore
Create Date: 2026-12-07
"""

from alembic import op

revision = '0013_key_notify'
down_revision = '0012_backup_restore'
branch_labels = None
depends_on = None

# table → (the notification's kind, the column naming what it is about, columns whose change
# alone alters no key's authority)
WATCHED = {
    'api_keys': ('key', 'id', ('last_used_at',)),
    'tenants': ('tenant', 'id', ()),
    'tenant_keys': ('tenant', 'tenant_id', ()),
    'users': ('user', 'id', ()),
    'memberships': ('user', 'user_id', ()),
}

FUNCTION = """
CREATE FUNCTION magistrate_auth_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ignored text[] := TG_ARGV[2:];
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('magistrate_auth', '*');
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND (to_jsonb(OLD) - ignored) = (to_jsonb(NEW) - ignored) THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('magistrate_auth', TG_ARGV[0] || ':' || (to_jsonb(OLD) ->> TG_ARGV[1]));
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('magistrate_auth', TG_ARGV[0] || ':' || (to_jsonb(NEW) ->> TG_ARGV[1]));
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute(FUNCTION)
    for table, (kind, column, ignored) in WATCHED.items():
        arguments = ", ".join(f"'{name}'" for name in (kind, column, *ignored))
        op.execute(f"CREATE TRIGGER {table}_auth_notify AFTER INSERT OR UPDATE OR DELETE ON "
                   f"{table} FOR EACH ROW EXECUTE FUNCTION magistrate_auth_notify({arguments})")
        op.execute(f"CREATE TRIGGER {table}_auth_notify_truncate AFTER TRUNCATE ON {table} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION magistrate_auth_notify('*', 'id')")


def downgrade() -> None:
    for table in WATCHED:
        op.execute(f"DROP TRIGGER {table}_auth_notify_truncate ON {table}")
        op.execute(f"DROP TRIGGER {table}_auth_notify ON {table}")
    op.execute("DROP FUNCTION magistrate_auth_notify()")
