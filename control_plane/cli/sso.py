"""``magistrate sso list|add|edit|disable|enable``: the identity providers of single sign-on, from
the shell of the machine that runs Magistrate.

Each change names the installation Owner who makes it (``--as EMAIL``) and goes through the
same ``do_*`` function as the dashboard's page (/sso), so the same checks hold and the change
is audited under that account's name. ``add`` fetches the provider's discovery document now,
through the operator's egress policy, as the page does; the client secret is read from
standard input (never an argument, which other users of the machine could see) and sealed.
``edit`` (or ``update``) changes only the options given, the secret too (``--client-secret-stdin``
replaces it); the issuer never changes."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from control_plane.identity.oidc import OidcClient
    from control_plane.models import IdentityProvider, User
    from control_plane.sealing import ControlSealer
    from control_plane.settings import Settings


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
    edit = ssub.add_parser(
        "edit", aliases=["update"], help="change an identity provider",
        description="Change what is given of a provider, the rest is kept; the change applies "
                    "from each person's next sign-in and is audited (the secret only as "
                    "replaced). A new discovery URL must name the same issuer: accounts are "
                    "bound to the issuer's subjects, and a new issuer is a new provider.")
    edit.add_argument("provider", help="the provider's name or id")
    edit.add_argument("--name", help="a new name: 2 to 63 of a-z, 0-9, '-'")
    edit.add_argument("--discovery-url", help="another discovery URL of the same issuer")
    edit.add_argument("--client-id", help="a new client id")
    edit.add_argument("--client-secret-stdin", action="store_true",
                      help="replace the client secret with the first line of standard input")
    edit.add_argument("--domains", help="allowed e-mail domains, comma separated ('': any)")
    edit.add_argument("--create-accounts", action=argparse.BooleanOptionalAction, default=None,
                      help="create an account (without tenant roles) for an unknown person")
    edit.add_argument("--groups-claim", help="the ID token claim holding groups ('': none)")
    edit.add_argument("--group-role", action="append", default=None, metavar="MAPPING",
                      help="'group = tenant-slug : Role' (repeatable; replaces the mapping)")
    edit.add_argument("--no-group-roles", action="store_true", help="remove every mapping")
    edit.add_argument("--trust-idp-mfa", action=argparse.BooleanOptionalAction, default=None,
                      help="the provider's second factor (amr/acr) stands for TOTP")
    edit.add_argument("--amr", help="accepted amr values, comma separated ('': RFC 8176's)")
    edit.add_argument("--acr", help="accepted acr values, comma separated ('': none)")
    edit.add_argument("--as", dest="acting", required=True, metavar="EMAIL",
                      help="the installation Owner making the change")
    edit.set_defaults(func=cmd_sso_edit)
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


def _secret_from_stdin(args: argparse.Namespace) -> str:
    from control_plane.cli.support import CommandError

    if not args.client_secret_stdin:
        return ""
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise CommandError("--client-secret-stdin was given but standard input is empty")
    return secret


def _protocol(args: argparse.Namespace) -> tuple[OidcClient, ControlSealer, Settings]:
    """The OpenID client (through the operator's egress policy) and the sealer, as the web
    process has them."""
    from control_plane.cli.support import prepare
    from control_plane.identity.oidc import OidcClient
    from control_plane.sealing import ControlSealer
    from control_plane.tenancy.connections import egress_policy

    settings, endpoints = prepare(args)
    oidc = OidcClient(egress_policy(settings), allow_http=not settings.is_production)
    return oidc, ControlSealer(endpoints.secret_key), settings


def cmd_sso_add(args: argparse.Namespace) -> int:
    from control_plane.cli.support import acting_user, control_session
    from control_plane.identity import service

    secret = _secret_from_stdin(args)
    oidc, sealer, settings = _protocol(args)
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


def _named_provider(s: Session, text: str, acting: User) -> IdentityProvider:
    """The provider a NAME_OR_ID argument names, checked for the acting Owner."""
    from control_plane.cli.support import CommandError
    from control_plane.identity import service
    from control_plane.models import IdentityProvider

    named = text.strip().lower()
    query = select(IdentityProvider).where(IdentityProvider.name == named)
    if named.isdigit():
        query = select(IdentityProvider).where(IdentityProvider.id == int(named))
    provider = s.scalars(query).first()
    if provider is None:
        raise CommandError(f"no identity provider is named {text.strip()} "
                           "(magistrate sso list shows them)")
    return service.access_provider(s, provider.id, acting_user=acting)


def cmd_sso_edit(args: argparse.Namespace) -> int:
    from control_plane.cli.support import CommandError, acting_user, control_session
    from control_plane.identity import service

    if args.no_group_roles and args.group_role:
        raise CommandError("give --group-role or --no-group-roles, not both")
    secret = _secret_from_stdin(args)
    oidc, sealer, _ = _protocol(args)
    with control_session(args) as s:
        me = acting_user(s, args.acting)
        provider = _named_provider(s, args.provider, me)
        group_roles = None
        if args.no_group_roles or args.group_role:
            group_roles = service.parse_group_roles(s, "\n".join(args.group_role or []))
        edit = service.ProviderEdit(
            name=args.name, discovery_url=args.discovery_url, client_id=args.client_id,
            client_secret=secret,
            allowed_domains=None if args.domains is None else service.parse_domains(args.domains),
            create_accounts=args.create_accounts, groups_claim=args.groups_claim,
            group_roles=group_roles, trust_idp_mfa=args.trust_idp_mfa,
            mfa_amr_values=(None if args.amr is None
                            else service.parse_mfa_values(args.amr, what="amr")),
            mfa_acr_values=(None if args.acr is None
                            else service.parse_mfa_values(args.acr, what="acr")))
        changed = service.do_update_provider(s, provider, edit=edit, oidc=oidc, sealer=sealer,
                                             acting_user=me)
        if not changed:
            print(f"provider {provider.name} unchanged: the options given are what it has")
        else:
            print(f"provider {provider.name} changed: {', '.join(changed)} (from each "
                  "person's next sign-in)")
    return 0


def _set_active(args: argparse.Namespace, active: bool) -> int:
    from control_plane.cli.support import CommandError, acting_user, control_session
    from control_plane.identity import service

    with control_session(args) as s:
        me = acting_user(s, args.acting)
        provider = _named_provider(s, args.provider, me)
        if provider.is_active == active:
            raise CommandError(f"the provider {provider.name} is already "
                               f"{'active' if active else 'disabled'}")
        service.do_set_provider_active(s, provider, active=active, acting_user=me)
        print(f"provider {provider.name} {'enabled' if active else 'disabled'}")
    return 0


def cmd_sso_disable(args: argparse.Namespace) -> int:
    return _set_active(args, False)


def cmd_sso_enable(args: argparse.Namespace) -> int:
    return _set_active(args, True)
