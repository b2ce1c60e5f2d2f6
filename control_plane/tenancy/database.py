"""Tenant databases on a Postgres server, through the server's admin role (CREATEDB, CREATEROLE).

- A migrated template database per tenant-tree revision (``magistrate_tenant_tmpl_<rev>``),
  owned by the NOLOGIN role ``magistrate_template_owner``; rebuilt when the tree's head changes.
- Per tenant: database ``magistrate_t_<id>`` cloned from the template, and two roles:
  ``…_owner`` (owns the database and its objects, runs migrations) and ``…_app`` (DML only; on
  the audit tables only INSERT and SELECT). CONNECT and TEMP are revoked from PUBLIC, so no other
  tenant's role can even open the database.
- Every other database of the server (the control database, the maintenance database
  ``postgres``, ``template1``, templates, spares, whatever else is there) is closed to PUBLIC
  too (``close_databases_to_public``), so a tenant's roles open their own database and nothing
  else. The admin role keeps CONNECT on the databases it uses by an explicit grant.

Every function here is idempotent: a crash in the middle, then a second call, ends in the same
state without duplicates or leftovers.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from control_plane.db import sqlalchemy_url
from control_plane.migrations import ALEMBIC_ROOT, head_revision, upgrade_tenant

TEMPLATE_OWNER = "magistrate_template_owner"
TEMPLATE_PREFIX = "magistrate_tenant_tmpl_"
TEMPLATE_LOCK = 74210
SPARE_PREFIX = "magistrate_spare_"
SPARES = 2  # ready clones per server: provisioning renames one instead of cloning
APPEND_ONLY_TABLES = ("audit_events", "audit_checkpoints")


def libpq_url(url: str) -> str:
    """A plain ``postgresql://`` URL for psycopg (no SQLAlchemy driver suffix)."""
    return sqlalchemy_url(url).replace("postgresql+psycopg://", "postgresql://", 1)


def url_for(admin_url: str, *, database: str, user: str | None = None,
            password: str | None = None, options: str | None = None) -> str:
    """The admin URL pointed at another database (and optionally as another role)."""
    parts = urlsplit(libpq_url(admin_url))
    netloc = parts.netloc
    if user is not None:
        host = netloc.rsplit("@", 1)[-1]
        credentials = quote(user, safe="")
        if password is not None:
            credentials += ":" + quote(password, safe="")
        netloc = f"{credentials}@{host}"
    query = parts.query
    if options:
        query = (query + "&" if query else "") + "options=" + quote(options, safe="")
    return urlunsplit((parts.scheme, netloc, "/" + database, query, ""))


def template_name() -> str:
    """Named by the tenant tree's head revision and a digest of its migration scripts, so a
    migration edited before release (in development) never reuses a template built from the
    old text."""
    revision = head_revision("tenant") or "base"
    digest = hashlib.sha256()
    for script in sorted((ALEMBIC_ROOT / "tenant" / "versions").glob("*.py")):
        digest.update(script.name.encode() + b"\0" + script.read_bytes() + b"\0")
    return f"{TEMPLATE_PREFIX}{revision.lower()}_{digest.hexdigest()[:10]}"


def _connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=10)


def database_exists(conn: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() \
        is not None


def role_exists(conn: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() \
        is not None


def _grant_self(conn: psycopg.Connection[tuple[object, ...]], role: str) -> None:
    """A non-superuser admin must be a member of a role to create objects owned by it."""
    is_super = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone()
    if is_super and not is_super[0]:
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role)))


@dataclass(frozen=True)
class ServerLockdown:
    """What ``close_databases_to_public`` did on one server."""

    admin_role: str
    closed: tuple[str, ...]  # databases whose CONNECT/TEMP for PUBLIC were revoked now
    left_open: tuple[str, ...]  # open to PUBLIC, but the admin role may not change them
    kept: tuple[str, ...]  # of those, the ones the admin role itself connects to

    def warning(self) -> str | None:
        if not self.left_open:
            return None
        grants = "".join(f"GRANT CONNECT ON DATABASE {quote_ident(name)} TO "
                         f"{quote_ident(self.admin_role)}; " for name in self.kept)
        revokes = "".join(f"REVOKE CONNECT, TEMPORARY ON DATABASE {quote_ident(name)} FROM "
                          f"PUBLIC; " for name in self.left_open)
        return (f"{len(self.left_open)} database(s) of this server are open to every role "
                f"(tenants' roles included) and {self.admin_role} may not close them: "
                f"{', '.join(self.left_open)}. As a superuser, run: {grants}{revokes}".rstrip())


def quote_ident(name: str) -> str:
    """A Postgres identifier, quoted, for SQL shown to an operator."""
    return '"' + name.replace('"', '""') + '"'


_OPEN_TO_PUBLIC = """
    SELECT d.datname, pg_has_role(d.datdba, 'USAGE') OR r.rolsuper
    FROM pg_database d, pg_roles r
    WHERE r.rolname = current_user
      AND EXISTS (SELECT 1 FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                  WHERE a.grantee = 0 AND a.privilege_type IN ('CONNECT', 'TEMPORARY'))
    ORDER BY d.datname
"""


@contextmanager
def privileges_lock(conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[None]:
    """Hold the server's lock on database privileges (the template's lock) on ``conn``: every
    GRANT or REVOKE ``ON DATABASE`` of Magistrate's runs under it. Postgres refuses two
    concurrent changes of one database's privileges ("tuple concurrently updated"), and
    ``close_databases_to_public`` touches every database of the server, so a provisioning, a
    restore and that sweep in other processes would otherwise fail each other at random."""
    conn.execute("SELECT pg_advisory_lock(%s)", (TEMPLATE_LOCK,))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (TEMPLATE_LOCK,))


def close_databases_to_public(admin_url: str) -> ServerLockdown:
    """Revoke CONNECT and TEMP from PUBLIC on every database of the server that still grants
    them (Postgres grants both to PUBLIC on every new database), keeping CONNECT for the admin
    role on the maintenance database and on its URL's own database (the control database, on
    the primary server). Idempotent and cheap when there is nothing to do: one query."""
    with _connect(url_for(admin_url, database="postgres")) as conn, privileges_lock(conn):
        return close_to_public_under_lock(conn, admin_url)


def close_to_public_under_lock(conn: psycopg.Connection[tuple[object, ...]],
                               admin_url: str) -> ServerLockdown:
    """``close_databases_to_public`` on ``conn`` (the admin role's, on the maintenance
    database), its caller holding ``privileges_lock`` in this or another session."""
    own = {"postgres", urlsplit(libpq_url(admin_url)).path.lstrip("/") or "postgres"}
    me = conn.execute("SELECT current_user").fetchone()
    closed, left_open = [], []
    for datname, may_change in conn.execute(_OPEN_TO_PUBLIC).fetchall():
        name = str(datname)
        if not may_change:
            left_open.append(name)
            continue
        db = sql.Identifier(name)
        try:
            if name in own:
                conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO CURRENT_USER").format(db))
            conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC"
                                 ).format(db))
        except (psycopg.errors.InvalidCatalogName, psycopg.errors.UndefinedObject,
                psycopg.errors.InternalError_):
            # dropped meanwhile, or "tuple concurrently updated": another session changed the
            # same database's privileges at this instant; the next run sees what is left
            continue
        closed.append(name)
    return ServerLockdown(str(me[0]) if me else "", tuple(closed), tuple(left_open),
                          tuple(name for name in left_open if name in own))


def ensure_template(admin_url: str) -> str:
    """The migrated template database for the current tenant tree, built when missing; and
    every database of the server closed to PUBLIC (``close_databases_to_public``), since every
    use of a server for tenants passes here."""
    name = template_name()
    with _connect(url_for(admin_url, database="postgres")) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (TEMPLATE_LOCK,))
        try:
            close_to_public_under_lock(conn, admin_url)
            if database_exists(conn, name):
                return name
            if not role_exists(conn, TEMPLATE_OWNER):
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(
                    sql.Identifier(TEMPLATE_OWNER)))
            _grant_self(conn, TEMPLATE_OWNER)
            building = name + "_building"
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(building)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
                sql.Identifier(building), sql.Identifier(TEMPLATE_OWNER)))
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(building)))
            # the migrations run with the template owner as session role, so it owns every object
            upgrade_tenant(url_for(admin_url, database=building,
                                   options=f"-c role={TEMPLATE_OWNER}"))
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(building), sql.Identifier(name)))
            conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true "
                                 "ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
            _drop_old_templates(conn, keep=name)
            return name
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (TEMPLATE_LOCK,))


def _drop_old_templates(conn: psycopg.Connection[tuple[object, ...]], *, keep: str) -> None:
    rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s AND datname <> %s",
                        (TEMPLATE_PREFIX + "%", keep)).fetchall()
    for (old,) in rows:
        ident = sql.Identifier(str(old))
        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(ident))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def ensure_roles(admin_url: str, *, owner: str, owner_password: str, app: str,
                 app_password: str) -> None:
    """Both roles log in with their own password and are members of nothing. INHERIT (the
    default) matters for the owner: on Postgres 15 the database owner's rights on the public
    schema come through the implicit pg_database_owner membership, which NOINHERIT would cut."""
    with _connect(url_for(admin_url, database="postgres")) as conn:
        for role, password in ((owner, owner_password), (app, app_password)):
            verb = "ALTER" if role_exists(conn, role) else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} WITH LOGIN INHERIT NOCREATEDB NOCREATEROLE "
                                        "PASSWORD {}").format(sql.Identifier(role),
                                                              sql.Literal(password)))
        _grant_self(conn, owner)


def ensure_database(admin_url: str, *, database: str, owner: str, app: str,
                    spares: str) -> bool:
    """Give ``database`` (owned by ``owner``) a migrated schema and lock down CONNECT.

    A spare clone of the template from this installation's namespace ``spares`` (see
    ``spare_namespace``) is renamed into place when one is ready (milliseconds); else the
    template is cloned now (``CREATE DATABASE`` is most of a provisioning's time). Returns True
    when a spare was used."""
    template = ensure_template(admin_url)
    used_spare = False
    with _connect(url_for(admin_url, database="postgres")) as conn:
        if not database_exists(conn, database):
            used_spare = _claim_spare(conn, database, spares)
            if not used_spare:
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}").format(
                        sql.Identifier(database), sql.Identifier(owner),
                        sql.Identifier(template)))
                except psycopg.errors.DuplicateDatabase:
                    pass  # a concurrent retry created it: same end state
        db = sql.Identifier(database)
        with privileges_lock(conn):
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                db, sql.Identifier(owner)))
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}, {}").format(
                db, sql.Identifier(owner), sql.Identifier(app)))
    return used_spare


def spare_namespace(control_url: str | URL) -> str:
    """The spares of one installation, named by its control database (host, port, name).

    Two installations sharing a tenant server (staging and production, or two versions during
    an upgrade) each claim and refill their own spares: one never renames the other's spare
    into place nor drops it as "of an older revision"."""
    url = make_url(sqlalchemy_url(control_url)) if isinstance(control_url, str) else control_url
    identity = f"{url.host or ''}:{url.port or 5432}/{url.database or ''}"
    return hashlib.sha256(identity.encode()).hexdigest()[:8]


def _spare_prefix(namespace: str) -> str:
    """``magistrate_spare_<namespace>_`` then a digest of the template's name, then a random
    suffix: 51 characters, under Postgres's 63 whatever the revision is called."""
    return f"{SPARE_PREFIX}{namespace}_"


def _current_prefix(namespace: str) -> str:
    revision = hashlib.sha256(template_name().encode()).hexdigest()[:16]
    return f"{_spare_prefix(namespace)}{revision}_"


def _claim_spare(conn: psycopg.Connection[tuple[object, ...]], database: str,
                 namespace: str) -> bool:
    """Rename one ready spare of this installation and the current template revision to
    ``database``."""
    rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s) "
                        "ORDER BY datname", (_current_prefix(namespace),)).fetchall()
    for (spare,) in rows:
        try:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(str(spare)), sql.Identifier(database)))
            return True
        except (psycopg.errors.UndefinedObject, psycopg.errors.InvalidCatalogName,
                psycopg.errors.ObjectInUse):
            continue  # another provisioning took it first
    return False


def refill_spares(admin_url: str, *, namespace: str, want: int = SPARES) -> int:
    """Keep ``want`` spare clones of the current template ready on this server for the
    installation ``namespace`` (and none of its older revisions); returns how many were
    created. Spares are owned by the template owner, closed to PUBLIC, and hold no tenant
    data."""
    ensure_template(admin_url)
    prefix = _current_prefix(namespace)
    created = 0
    with _connect(url_for(admin_url, database="postgres")) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                            (_spare_prefix(namespace),)).fetchall()
        current = [str(r[0]) for r in rows if str(r[0]).startswith(prefix)]
        for (old,) in rows:
            if not str(old).startswith(prefix):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(str(old))))
        for _ in range(max(0, want - len(current))):
            name = prefix + secrets.token_hex(4)
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_OWNER),
                sql.Identifier(template_name())))
            with privileges_lock(conn):
                conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(
                    sql.Identifier(name)))
            created += 1
    return created


def apply_privileges(admin_url: str, *, database: str, owner: str, app: str) -> None:
    """Inside the tenant database: the owner owns everything; the app role gets DML only, and
    only INSERT and SELECT on the append-only tables."""
    with _connect(url_for(admin_url, database=database)) as conn:
        if role_exists(conn, TEMPLATE_OWNER):
            _grant_self(conn, TEMPLATE_OWNER)
            _take_ownership(conn, owner)
        o, a = sql.Identifier(owner), sql.Identifier(app)
        statements: list[sql.Composed | sql.SQL] = [
            sql.SQL("REVOKE ALL ON SCHEMA public FROM PUBLIC"),
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(a),
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}"
                    ).format(a),
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(a),
            sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT, INSERT, "
                    "UPDATE, DELETE ON TABLES TO {}").format(o, a),
            sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT USAGE, SELECT "
                    "ON SEQUENCES TO {}").format(o, a),
        ]
        statements += [sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(
            sql.Identifier(table), a) for table in APPEND_ONLY_TABLES]
        statements += [
            # the migrations' bookkeeping is the owner's; the service role may read it
            sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON "
                    "alembic_version FROM {}").format(a),
            # no function is callable but by the owner (prune_audit_events above all); trigger
            # functions fire regardless, EXECUTE is checked when a trigger is created
            sql.SQL("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC"),
            sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE EXECUTE ON FUNCTIONS FROM "
                    "PUBLIC").format(o),
        ]
        for statement in statements:
            conn.execute(statement)


def _take_ownership(conn: psycopg.Connection[tuple[object, ...]], owner: str) -> None:
    """Hand every object the clone inherited from the template owner to the tenant's owner.
    (Not REASSIGN OWNED: that would also hand over the template database itself.)"""
    for kind, query in (
        ("TABLE", "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c JOIN "
                  "pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', "
                  "'m') AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = %s)"),
        ("SEQUENCE", "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c JOIN "
                     "pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' AND "
                     "c.relowner = (SELECT oid FROM pg_roles WHERE rolname = %s)"),
        ("FUNCTION", "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.proowner = "
                     "(SELECT oid FROM pg_roles WHERE rolname = %s)"),
        ("TYPE", "SELECT format('%%I.%%I', n.nspname, t.typname) FROM pg_type t JOIN "
                 "pg_namespace n ON n.oid = t.typnamespace WHERE t.typtype IN ('e', 'd') AND "
                 "t.typowner = (SELECT oid FROM pg_roles WHERE rolname = %s)"),
    ):
        # tables first: their owned sequences follow them, so re-read before each kind
        for (name,) in conn.execute(query, (TEMPLATE_OWNER,)).fetchall():
            conn.execute(sql.SQL("ALTER " + kind + " {} OWNER TO {}").format(
                sql.SQL(str(name)), sql.Identifier(owner)))


def drop_tenant(admin_url: str, *, database: str, owner: str, app: str) -> None:
    """Drop the database, the databases restored from its backups (``<database>_r…``,
    ``<database>_d…``, control_plane/backups/restore.py) and both roles. Idempotent: what is
    already gone is skipped."""
    with _connect(url_for(admin_url, database="postgres")) as conn:
        restored = [str(r[0]) for r in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
            (database + "_",)).fetchall()]
        for name in [database, *restored]:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
        for role in (app, owner):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def tenant_exists(admin_url: str, *, database: str, roles: tuple[str, ...]) -> dict[str, bool]:
    with _connect(url_for(admin_url, database="postgres")) as conn:
        found = {database: database_exists(conn, database)}
        found.update({role: role_exists(conn, role) for role in roles})
        return found
