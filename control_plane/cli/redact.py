"""``magistrate redact``: what the gateway would send, for text on standard input.

Prints ``{"text": ..., "entities": [{"type", "start", "end", "placeholder"}]}`` (offsets in the
input, end exclusive); with ``--jsonl``, reads one JSON string per line and writes one such
object per line. It needs no database and prints no original values, only where they were."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.redaction import DETECTORS, PROFILES, Profile, RedactionResult, redact_text


def register(sub: Any) -> None:
    redact = sub.add_parser(
        "redact", help="redact text from standard input as the gateway would",
        description="Read text on standard input and print, as JSON, the text the gateway "
                    "would send under a redaction profile, and the entities replaced (type, "
                    "start and end offsets in the input, placeholder).")
    redact.add_argument("--profile", default="standard", metavar="PROFILE",
                        help=f"one of {', '.join(PROFILES)} (default standard)")
    redact.add_argument("--jsonl", action="store_true",
                        help="read one JSON string per line; write one JSON object per line")
    redact.add_argument("--detector", action="append", default=[], metavar="NAME",
                        help=f"with --profile custom: a detector to run ({', '.join(DETECTORS)});"
                             " repeatable")
    redact.add_argument("--term", action="append", default=[], metavar="T",
                        help="with --profile custom: a literal term to redact, any case; "
                             "repeatable")
    redact.add_argument("--pattern", action="append", default=[], metavar="P",
                        help="with --profile custom: a regular expression to redact; repeatable")
    redact.set_defaults(func=cmd_redact)


def _profile(args: argparse.Namespace) -> Profile:
    if args.profile not in PROFILES:
        raise UsageError(f"unknown profile {args.profile!r}; choose one of "
                         f"{', '.join(PROFILES)}.")
    if args.profile != "custom" and (args.detector or args.term or args.pattern):
        raise UsageError("--detector, --term and --pattern go with --profile custom.")
    try:
        return Profile.from_settings(args.profile, args.detector, args.term, args.pattern)
    except TenantInvalidInput as exc:  # an unknown detector, a refused term or pattern
        raise UsageError(exc.message) from None


class UsageError(Exception):
    """A mistake on the command line: one sentence, exit code 2."""


def _render(result: RedactionResult) -> str:
    return json.dumps({"text": result.text,
                       "entities": [{"type": e.type, "start": e.start, "end": e.end,
                                     "placeholder": e.placeholder} for e in result.entities]},
                      ensure_ascii=False)


def cmd_redact(args: argparse.Namespace) -> int:
    from control_plane.cli.support import CommandError

    try:
        profile = _profile(args)
    except UsageError as exc:
        print(f"magistrate: {exc}", file=sys.stderr)
        return 2
    try:
        if not args.jsonl:
            print(_render(redact_text(sys.stdin.read(), profile)))
            return 0
        for number, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)
            except json.JSONDecodeError:
                text = None
            if not isinstance(text, str):
                print(f"magistrate: line {number} is not a JSON string; each line must be one, "
                      'such as "call me at 555-123-4567".', file=sys.stderr)
                return 2
            print(_render(redact_text(text, profile)), flush=True)
    except TenantInvalidInput as exc:  # a custom pattern ran out of time
        raise CommandError(exc.message) from None
    return 0
