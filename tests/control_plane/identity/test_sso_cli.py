"""``magistrate sso list|add|disable|enable`` as a subprocess against the test database and a
real OpenID provider on a loopback port: what it prints, what it changes, what it audits, and
its one-sentence refusals."""

from __future__ import annotations

from sqlalchemy import select, text

from control_plane.models import IdentityProvider, PlatformAuditEvent
from tests.control_plane.test_cli import cli_env, run  # noqa: F401 - the fixture
from tests.factories import make_user


def test_an_owner_adds_lists_disables_and_enables_a_provider(cli_env, db, op):  # noqa: F811
    make_user(db, "root@magistrate.example")
    make_user(db, "member@magistrate.example", is_owner=False)
    env = {**cli_env, "MAGISTRATE_GATEWAY_PRIVATE_NETWORKS": "127.0.0.0/8"}
    added = run("sso", "add", "--name", "corp", "--discovery-url", op.discovery_url,
                "--client-id", op.client_id, "--client-secret-stdin", "--domains",
                "corp.example", "--trust-idp-mfa", "--amr", "hwk,otp", "--as",
                "root@magistrate.example", env_extra=env, stdin=op.client_secret + "\n")
    assert added.returncode == 0, added.stderr
    assert "provider corp added (id" in added.stdout and op.issuer in added.stdout
    assert "/sign-in/sso/callback" in added.stdout
    with db() as s:
        provider = s.scalars(select(IdentityProvider)).one()
        assert provider.issuer == op.issuer and provider.mfa_amr_values == ["hwk", "otp"]
        assert provider.client_secret_sealed is not None
        assert op.client_secret.encode() not in provider.client_secret_sealed
    listed = run("sso", "list", env_extra=env)
    assert listed.returncode == 0
    assert "corp" in listed.stdout and "active" in listed.stdout
    assert "amr hwk,otp" in listed.stdout and "1 provider(s)" in listed.stdout

    refusals = [
        (("sso", "add", "--name", "corp", "--discovery-url", op.discovery_url, "--client-id",
          "x", "--as", "root@magistrate.example"), "already exists"),
        (("sso", "add", "--name", "Bad Name!", "--discovery-url", op.discovery_url,
          "--client-id", "x", "--as", "root@magistrate.example"), "lowercase letters"),
        (("sso", "add", "--name", "other", "--discovery-url", op.issuer + "/nothing",
          "--client-id", "x", "--as", "root@magistrate.example"), "answered 404"),
        (("sso", "add", "--name", "other", "--discovery-url", op.discovery_url,
          "--client-id", "x", "--as", "member@magistrate.example"), "Only an Owner"),
        (("sso", "add", "--name", "other", "--discovery-url", op.discovery_url,
          "--client-id", "x", "--client-secret-stdin", "--as", "root@magistrate.example"),
         "standard input is empty"),
        (("sso", "disable", "nope", "--as", "root@magistrate.example"), "no identity provider"),
        (("sso", "disable", "corp", "--as", "nobody@magistrate.example"), "no account"),
        (("sso", "enable", "corp", "--as", "root@magistrate.example"), "already active"),
    ]
    for args, says in refusals:
        refused = run(*args, env_extra=env, stdin="")
        assert refused.returncode == 1, (args, refused.stdout)
        assert says in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr

    disabled = run("sso", "disable", "corp", "--as", "root@magistrate.example", env_extra=env)
    assert disabled.returncode == 0 and "provider corp disabled" in disabled.stdout
    assert "disabled" in run("sso", "list", env_extra=env).stdout
    enabled = run("sso", "enable", str(provider.id), "--as", "root@magistrate.example",
                  env_extra=env)
    assert enabled.returncode == 0 and "provider corp enabled" in enabled.stdout
    with db() as s:
        kinds = list(s.scalars(select(PlatformAuditEvent.event_type)
                               .where(PlatformAuditEvent.event_type.like("sso.provider_%"))
                               .order_by(PlatformAuditEvent.seq)))
        actors = set(s.scalars(select(PlatformAuditEvent.actor_name)
                               .where(PlatformAuditEvent.event_type.like("sso.provider_%"))))
    assert kinds == ["sso.provider_created", "sso.provider_disabled", "sso.provider_enabled"]
    assert actors == {"root@magistrate.example"}


def test_an_owner_edits_a_provider_and_rotates_its_secret(cli_env, db, op):  # noqa: F811
    from tests.fakes.oidc_provider import FakeOpenIDProvider

    make_user(db, "root@magistrate.example")
    env = {**cli_env, "MAGISTRATE_GATEWAY_PRIVATE_NETWORKS": "127.0.0.0/8"}
    owner = ("--as", "root@magistrate.example")
    assert run("sso", "add", "--name", "corp", "--discovery-url", op.discovery_url,
               "--client-id", op.client_id, "--create-accounts", *owner, env_extra=env
               ).returncode == 0
    with db() as s:
        s.execute(text(
            "INSERT INTO tenants (slug, name, state) VALUES ('acme', 'Acme', 'active')"))
        s.commit()
    edited = run("sso", "edit", "corp", "--domains", "corp.example", "--no-create-accounts",
                 "--groups-claim", "groups", "--group-role", "ops = acme : Operator",
                 "--client-secret-stdin", *owner, env_extra=env, stdin="rotated-secret\n")
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.startswith("provider corp changed: allowed_domains, client_secret, "
                                    "create_accounts, group_roles, groups_claim")
    with db() as s:
        provider = s.scalars(select(IdentityProvider)).one()
        assert provider.allowed_domains == ["corp.example"] and not provider.create_accounts
        assert provider.groups_claim == "groups" and len(provider.group_roles) == 1
        assert provider.client_secret_sealed is not None
        assert b"rotated-secret" not in provider.client_secret_sealed
    # the alias; options not given are kept
    renamed = run("sso", "update", str(provider.id), "--name", "corp-okta", "--no-group-roles",
                  *owner, env_extra=env)
    assert renamed.returncode == 0, renamed.stderr
    with db() as s:
        provider = s.scalars(select(IdentityProvider)).one()
        assert provider.name == "corp-okta" and provider.group_roles == []
        assert provider.allowed_domains == ["corp.example"]
        events = list(s.scalars(select(PlatformAuditEvent).where(
            PlatformAuditEvent.event_type == "sso.provider_updated")
            .order_by(PlatformAuditEvent.seq)))
    assert [sorted(e.details["changed"]) for e in events] == [
        ["allowed_domains", "client_secret", "create_accounts", "group_roles", "groups_claim"],
        ["group_roles", "name"]]
    assert "rotated-secret" not in str([e.details for e in events])
    unchanged = run("sso", "edit", "corp-okta", "--domains", "corp.example", *owner,
                    env_extra=env)
    assert unchanged.returncode == 0 and "unchanged" in unchanged.stdout

    other = FakeOpenIDProvider().start()
    try:
        refused = run("sso", "edit", "corp-okta", "--discovery-url", other.discovery_url,
                      *owner, env_extra=env)
    finally:
        other.stop()
    assert refused.returncode == 1 and "names the issuer" in refused.stderr
    for args, says in ((("--group-role", "x = y : Admin", "--no-group-roles"), "not both"),
                       (("--group-role", "x = nowhere : Admin"), "no tenant has the slug"),
                       (("--client-secret-stdin",), "standard input is empty")):
        bad = run("sso", "edit", "corp-okta", *args, *owner, env_extra=env, stdin="")
        assert bad.returncode == 1 and says in bad.stderr, (args, bad.stderr)
        assert "Traceback" not in bad.stderr
