"""``magistrate reconcile``: count jobs lost, side effects duplicated and audit chains broken
(``workers/reconcile.py``). Read only; run it after an incident, or after a fault drill.

Exit codes: 0 nothing found; 1 something found (listed), or the database cannot be reached."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    reconcile = sub.add_parser(
        "reconcile", help="count lost jobs, duplicated side effects and broken audit chains",
        description="Check the job outbox and its side effects after a fault: jobs no worker "
                    "will run (lost), side effects recorded twice for one job (a tenant "
                    "provisioned twice, a rotation or an export done twice, a vote recorded "
                    "twice), partial results left behind, and every audit chain (the "
                    "platform's and each tenant's). Writes nothing. Exit 1 when anything is "
                    "found.")
    reconcile.add_argument("--json", action="store_true",
                           help="print the counts and findings as one JSON object")
    reconcile.set_defaults(func=cmd_reconcile)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from control_plane.cli.support import CommandError, check_database, prepare
    from control_plane.db import make_engine, make_session_factory
    from control_plane.keys.registry import DataKeyCache, build_key_providers
    from control_plane.sealing import ControlSealer
    from control_plane.tenancy.connections import TenantConnections
    from workers.reconcile import reconcile

    settings, endpoints = prepare(args)
    check_database(endpoints.database_url)
    providers = build_key_providers(
        home=settings.home, production=settings.is_production, aws_region=settings.aws_region,
        aws_endpoint_url=settings.aws_kms_endpoint, gcp_endpoint=settings.gcp_kms_endpoint)
    engine = make_engine(endpoints.database_url, pool_size=2)
    connections = TenantConnections(sealer=ControlSealer(endpoints.secret_key),
                                    providers=providers, dek_cache=DataKeyCache())
    try:
        found = reconcile(make_session_factory(engine), connections,
                          exports_dir=settings.home / "exports")
    finally:
        connections.close()
        engine.dispose()
    if args.json:
        print(json.dumps(found.as_dict(), indent=2, sort_keys=True))
    else:
        counts = found.counts()
        print(f"checked {counts['jobs_checked']} job(s) and {counts['tenants_checked']} "
              "tenant(s)")
        for label, key, items in (
                ("jobs lost", "jobs_lost", found.lost_jobs),
                ("side effects duplicated", "side_effects_duplicated", found.duplicates),
                ("audit chains broken", "audit_chains_broken", found.broken_chains),
                ("half-written results", "half_written", found.half_written)):
            print(f"{label}: {counts[key]}")
            for item in items:
                print(f"  {item}")
    if not found.clean:
        raise CommandError("reconciliation found problems; they are listed above")
    return 0
