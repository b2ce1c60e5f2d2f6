"""``magistrate sso list|add|disable|enable``: the identity providers of single sign-on, from
the shell of the machine that runs Magistrate.

Each change names the installation Owner who makes it (``--as EMAIL``) and goes through the
same ``do_*`` function as the dashboard's page (/sso), so the same checks hold and the change
is audited under that account's name. ``add`` fetches the provider's discovery document now,
through the operator's egress policy, as the page does; the client secret is read from
standard input (never an argument, which other users of the machine could see) and sealed."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy import select


def register(sub: Any) -> None:
    sso = sub.add_parser("sso", help="manage single sign-on's identity providers",
                         description="List, add, disable and enable the OpenID Connect "
                                     "identity providers people sign in with.")
    ssub = sso.add_subparsers(dest="sso_command", metavar="ACTION", required=True)
    listing = ssub.add_parser("list", help="list the identity providers",
                              description="List the identity providers: id, name, status, "
                                          "issuer, allowed domains and second-factor policy.")
    listing.set_defaults(func=cmd_sso_list)
    add = ssub.add_parser(
        "add", help="add an identity provider",
        description="Add an OpenID Connect provider by its discovery URL (Entra ID: "
                    "https://login.microsoftonline.com/TENANT/v2.0/.well-known/openid-"
                    "configuration; Google: https://accounts.google.com/.well-known/openid-"
                    "configuration; Okta: https://ORG.okta.com/.well-known/openid-"
                    "configuration). Its redirect URI is MAGISTRATE_PUBLIC_URL + "
                    "/sign-in/sso/callback.")
    add.add_argument("--name", required=True, help="a short name: 2 to 63 of a-z, 0-9, '-'")
    add.add_argument("--discovery-url", required=True, help="the provider's discovery URL")
    add.add_argument("--client-id", required=True, help="the client id the provider gave")
    add.add_argument("--client-secret-stdin", action="store_true",
                     help="read the client secret from the first line of standard input "
                          "(without it: a public client, PKCE alone)")
    add.add_argument("--domains", default="", help="allowed e-mail domains, comma separated "
                                                   "(default: any)")
    add.add_argument("--create-accounts", action="store_true",
                     help="create an account (without tenant roles) for an unknown person")
    add.add_argument("--groups-claim", default="", help="the ID token claim holding groups")
    add.add_argument("--group-role", action="append", default=[], metavar="MAPPING",
                     help="'group = tenant-slug : Role' (repeatable)")
    add.add_argument("--trust-idp-mfa", action="store_true",
                     help="the provider's second factor (amr/acr) stands for TOTP")
    add.add_argument("--amr", default="", help="accepted amr values, comma separated "
                                               "(default: the RFC 8176 second factors)")
    add.add_argument("--acr", default="", help="accepted acr values, comma separated")
    add.add_argument("--as", dest="acting", required=True, metavar="EMAIL",
                     help="the installation Owner making the change")
    add.set_defaults(func=cmd_sso_add)
    for name, verb, func in (
            ("disable", "Disable a provider: nobody signs in through it, and its SCIM tokens "
                        "stop working, until it is enabled again.", cmd_sso_disable),
            ("enable", "Enable a disabled provider again.", cmd_sso_enable)):
        parser = ssub.add_parser(name, help=verb.split(":")[0].split(".")[0].lower(),
                                 description=verb)
        parser.add_argument("provider", help="the provider's name or id")
        parser.add_argument("--as", dest="acting", required=True, metavar="EMAIL",
                            help="the installation Owner making the change")
        parser.set_defaults(func=func)


def cmd_sso_list(args: argparse.Namespace) -> int:
    from control_plane.cli.support import control_session
    from control_plane.identity import service

    with control_session(args) as s:
        providers = service.list_providers(s)
        for p in providers:
            mfa = "TOTP"
            if p.trust_idp_mfa:
                mfa = "amr " + (",".join(p.mfa_amr_values) or "RFC 8176")
                if p.mfa_acr_values:
                    mfa += " / acr " + ",".join(p.mfa_acr_values)
            status = "active" if p.is_active else "disabled"
            domains = ",".join(p.allowed_domains) or "any domain"
            print(f"{p.id:<5} {p.name:<20} {status:<9} {p.issuer}  [{domains}; second factor: "
                  f"{mfa}]")
        print(f"{len(providers)} provider(s)")
    return 0


def cmd_sso_add(args: argparse.Namespace) -> int:
    from control_plane.cli.support import CommandError, acting_user, control_session, prepare
    from control_plane.identity import service
    from control_plane.identity.oidc import OidcClient
    from control_plane.sealing import ControlSealer
    from control_plane.tenancy.connections import egress_policy

    secret = ""
    if args.client_secret_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            raise CommandError("--client-secret-stdin was given but standard input is empty")
    settings, endpoints = prepare(args)
    oidc = OidcClient(egress_policy(settings), allow_http=not settings.is_production)
    sealer = ControlSealer(endpoints.secret_key)
    with control_session(args) as s:
        me = acting_user(s, args.acting)
        provider = service.do_create_provider(
            s, name=args.name, discovery_url=args.discovery_url, client_id=args.client_id,
            client_secret=secret, allowed_domains=service.parse_domains(args.domains),
            create_accounts=args.create_accounts, groups_claim=args.groups_claim,
            group_roles=service.parse_group_roles(s, "\n".join(args.group_role)),
            trust_idp_mfa=args.trust_idp_mfa, oidc=oidc, sealer=sealer, acting_user=me,
            mfa_amr_values=service.parse_mfa_values(args.amr, what="amr"),
            mfa_acr_values=service.parse_mfa_values(args.acr, what="acr"))
        print(f"provider {provider.name} added (id {provider.id}, issuer {provider.issuer}); "
              f"its redirect URI is {settings.public_origin}/sign-in/sso/callback")
    return 0


def _set_active(args: argparse.Namespace, active: bool) -> int:
    from control_plane.cli.support import CommandError, acting_user, control_session
    from control_plane.identity import service
    from control_plane.models import IdentityProvider

    with control_session(args) as s:
        me = acting_user(s, args.acting)
        named = args.provider.strip().lower()
        query = select(IdentityProvider).where(IdentityProvider.name == named)
        if named.isdigit():
            query = select(IdentityProvider).where(IdentityProvider.id == int(named))
        provider = s.scalars(query).first()
        if provider is None:
            raise CommandError(f"no identity provider is named {args.provider.strip()} "
                               "(magistrate sso list shows them)")
        if provider.is_active == active:
            raise CommandError(f"the provider {provider.name} is already "
                               f"{'active' if active else 'disabled'}")
        provider = service.access_provider(s, provider.id, acting_user=me)
        service.do_set_provider_active(s, provider, active=active, acting_user=me)
        print(f"provider {provider.name} {'enabled' if active else 'disabled'}")
    return 0


def cmd_sso_disable(args: argparse.Namespace) -> int:
    return _set_active(args, False)


def cmd_sso_enable(args: argparse.Namespace) -> int:
    return _set_active(args, True)
