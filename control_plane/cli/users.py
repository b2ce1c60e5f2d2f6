"""``magistrate user create|reset-password|deactivate|reactivate`` and ``magistrate member
list|set-role|remove``.

``user create`` and ``user reset-password`` print a one-time password once; they act as the
system, from the shell of the machine that runs Magistrate. The others:

Each change names who makes it (``--as EMAIL``, an active account) and goes through the same
``do_*`` function as the dashboard and the JSON API, so the same rules hold from the shell:
nobody removes, demotes or deactivates a member whose role outranks theirs, and a tenant's
last active Owner is neither removed, demoted nor deactivated. The change is audited under that
account's name."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session


def register(sub: Any) -> None:
    user = sub.add_parser("user", help="manage operator accounts",
                          description="Manage operator accounts.")
    user_sub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    create = user_sub.add_parser("create", help="create an account",
                                 description="Create an account. Without --password-stdin a "
                                             "one-time password is generated and printed once.")
    create.add_argument("--email", required=True, help="the account's e-mail address")
    create.add_argument("--name", help="display name")
    create.add_argument("--owner", action="store_true", help="make the account an Owner")
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")
    create.set_defaults(func=cmd_user_create)
    reset = user_sub.add_parser(
        "reset-password", help="give an account a new one-time password",
        description="Give an account a new one-time password, printed once: the old password "
                    "stops working, every session of the account is signed out, and the user "
                    "chooses a new password at next sign-in (second factors are kept). "
                    "Recorded in the platform audit log. This is how a lost first-run password "
                    "is recovered.")
    reset.add_argument("email", help="the account's e-mail address")
    reset.set_defaults(func=cmd_user_reset_password)

    member = sub.add_parser("member", help="list members of a tenant, change roles, remove",
                            description="List a tenant's members, change a member's role or "
                                        "remove a member, as the account named by --as.")
    msub = member.add_subparsers(dest="member_command", metavar="ACTION", required=True)
    listing = msub.add_parser("list", help="list a tenant's members",
                              description="List a tenant's members and their roles.")
    listing.add_argument("--tenant", required=True, help="the tenant's slug")
    listing.set_defaults(func=cmd_member_list)
    role = msub.add_parser("set-role", help="change a member's role",
                           description="Change a member's role. Refused when their role "
                                       "outranks yours, when the new role does, or when they "
                                       "are the tenant's last Owner.")
    role.add_argument("--tenant", required=True, help="the tenant's slug")
    role.add_argument("--email", required=True, help="the member's e-mail")
    role.add_argument("--role", required=True, help="the new role")
    role.add_argument("--as", dest="acting", required=True, metavar="EMAIL",
                      help="the Owner or Admin of the tenant making the change")
    role.set_defaults(func=cmd_member_set_role)
    remove = msub.add_parser("remove", help="remove a member",
                             description="Remove a member; their API keys of this tenant are "
                                         "revoked. Refused when their role outranks yours or "
                                         "they are the tenant's last Owner.")
    remove.add_argument("--tenant", required=True, help="the tenant's slug")
    remove.add_argument("--email", required=True, help="the member's e-mail")
    remove.add_argument("--as", dest="acting", required=True, metavar="EMAIL",
                        help="the Owner or Admin of the tenant making the change")
    remove.set_defaults(func=cmd_member_remove)
    for name, verb, func in (("deactivate", "Deactivate an account: its sessions end and "
                              "every API key it made is revoked (reactivation does not revive "
                              "them). Refused for the last active Owner of the installation or "
                              "of a tenant.", cmd_user_deactivate),
                             ("reactivate", "Let a deactivated account sign in again; its "
                              "revoked API keys stay revoked.", cmd_user_reactivate)):
        parser = user_sub.add_parser(name, help=verb.split(":")[0].split(";")[0].lower(),
                                     description=verb)
        parser.add_argument("--email", required=True, help="the account's e-mail")
        parser.add_argument("--as", dest="acting", required=True, metavar="EMAIL",
                            help="the installation Owner making the change")
        parser.set_defaults(func=func)


def _tenant_change(args: argparse.Namespace,
                   change: Callable[[Session, Any, int, Any], str]) -> int:
    from control_plane.cli.support import CommandError, acting_user, control_session, find_user
    from control_plane.models import Membership, Tenant
    from control_plane.tenancy import service

    with control_session(args) as s:
        tenant = s.scalars(select(Tenant).where(Tenant.slug == args.tenant.strip().lower(),
                                                Tenant.state != "deleted")).first()
        if tenant is None:
            raise CommandError(f"no tenant has the slug {args.tenant}")
        me = acting_user(s, args.acting)
        access = service.access_tenant(s, tenant.id, user=me, permission="members.manage")
        target = find_user(s, args.email, what="--email")
        membership = s.scalars(select(Membership).where(Membership.tenant_id == tenant.id,
                                                        Membership.user_id == target.id)).first()
        if membership is None:
            raise CommandError(f"{target.email} is not a member of {tenant.slug}")
        print(change(s, access, membership.id, me))
    return 0


def cmd_member_set_role(args: argparse.Namespace) -> int:
    from control_plane.tenancy import service

    def change(s: Session, access: Any, membership_id: int, me: Any) -> str:
        changed = service.do_change_member_role(s, access, membership_id, role=args.role,
                                                acting_user=me)
        return f"{changed.user.email} is now {changed.role} in {access.tenant.slug}"

    return _tenant_change(args, change)


def cmd_member_remove(args: argparse.Namespace) -> int:
    from control_plane.tenancy import service

    def change(s: Session, access: Any, membership_id: int, me: Any) -> str:
        service.do_remove_member(s, access, membership_id, acting_user=me)
        return f"{args.email.strip().lower()} removed from {access.tenant.slug}"

    return _tenant_change(args, change)


def cmd_member_list(args: argparse.Namespace) -> int:
    from control_plane.cli.support import CommandError, control_session
    from control_plane.models import Tenant
    from control_plane.tenancy import service

    with control_session(args) as s:
        tenant = s.scalars(select(Tenant).where(Tenant.slug == args.tenant.strip().lower(),
                                                Tenant.state != "deleted")).first()
        if tenant is None:
            raise CommandError(f"no tenant has the slug {args.tenant}")
        rows = service.members(s, tenant)
        for membership, user in rows:
            state = "" if user.is_active else " (deactivated)"
            print(f"{user.email:<40} {membership.role}{state}")
        print(f"{len(rows)} member(s)")
    return 0


def _set_active(args: argparse.Namespace, active: bool) -> int:
    from control_plane.cli.support import acting_user, control_session, find_user
    from control_plane.users import service

    with control_session(args) as s:
        me = acting_user(s, args.acting)
        target = service.access_user(s, find_user(s, args.email, what="--email").id,
                                     acting_user=me)
        if active:
            service.do_reactivate_user(s, target, acting_user=me)
        else:
            service.do_deactivate_user(s, target, acting_user=me)
        print(f"{target.email} {'reactivated' if active else 'deactivated'}")
    return 0


def cmd_user_deactivate(args: argparse.Namespace) -> int:
    return _set_active(args, False)


def cmd_user_reactivate(args: argparse.Namespace) -> int:
    return _set_active(args, True)


def cmd_user_create(args: argparse.Namespace) -> int:
    from control_plane.cli.support import CommandError, check_database, prepare
    from control_plane.db import make_engine, make_session_factory
    from control_plane.exceptions import MagistrateError
    from control_plane.users.service import do_create_user

    _, endpoints = prepare(args)
    check_database(endpoints.database_url)

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    engine = make_engine(endpoints.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as s, s.begin():
            created = do_create_user(s, email=args.email, display_name=args.name or "",
                                     is_owner=args.owner, password=password, acting_user=None)
            email = created.user.email
    except MagistrateError as exc:
        raise CommandError(exc.message) from None
    finally:
        engine.dispose()
    print(f"created {'Owner' if args.owner else 'user'} {email}")
    if created.one_time_password:
        print(f"one-time password (shown once): {created.one_time_password}")
    return 0


def cmd_user_reset_password(args: argparse.Namespace) -> int:
    from control_plane.cli.support import (
        ONE_TIME_PASSWORD_LINE,
        CommandError,
        check_database,
        prepare,
    )
    from control_plane.db import make_engine, make_session_factory
    from control_plane.exceptions import MagistrateError
    from control_plane.users.service import do_reset_password

    _, endpoints = prepare(args)
    check_database(endpoints.database_url)

    engine = make_engine(endpoints.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as s, s.begin():
            one_time = do_reset_password(s, email=args.email, acting_user=None)
    except MagistrateError as exc:
        raise CommandError(exc.message) from None
    finally:
        engine.dispose()
    print(f"password of {args.email.strip().lower()} reset; every session of it was signed out")
    print(f"{ONE_TIME_PASSWORD_LINE}{one_time}")
    return 0
