#!/usr/bin/env python3
"""Verify an exported Magistrate audit log, offline, on your own machine.

    python3 verify_audit_chain.py EXPORT.jsonl [--pin-key BASE64] [--checkpoint FILE]
                                               [--allow-format-1]

The format is specified in AUDIT_FORMAT.md, next to this script; its section 4 lists the
checks in the order this script makes them, and anything that page forbids fails here,
wherever in the file it is. Pin the key you received out of band (the key notice), not the
one the file names: without a pin nothing in the file is authenticated.

The hash chain is checked with the Python standard library alone; signatures (Ed25519) need
the `cryptography` package, and the script says so when it is missing. Memory stays small
for any size: a first pass notes which seqs the checkpoints name, then the file is read line
by line. A long file is also shared out to worker processes, one per CPU (see verify()).

Prints "OK <rows> rows, head <hash>" and exits 0, or "FAIL <the first problem>" and exits 1.
Exit 2: the command line or this machine is the problem (no such file, bad key, no cryptography).
"""

import argparse
import base64
import datetime
import functools
import hashlib
import json
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor

GENESIS_HASH = "0" * 64
FORMATS = (1, 2)
EVENT_FIELDS = ("seq", "occurred_at", "actor_type", "actor_id", "actor_name", "event_type",
                "target_type", "target_id", "details")
ACTOR_TYPES = ("user", "api_key", "system")
MAX_LINE = 16 * 1024 * 1024
MAX_SEQ = (1 << 63) - 1  # a bigint
CHECKPOINT_SEQ = re.compile(rb'\n{"chain_hash":"[0-9a-f]{64}","created_at":"[^"\\n]*",'
                            rb'"key_id":"[0-9a-f]{16}","seq":([0-9]{1,18}),')
EVENT_END = b',"type":"event"}\n'
RUN_SEQ = re.compile(rb'","seq":([1-9][0-9]{0,17}),')
FLOATISH = re.compile(rb"[0-9][.eE]")  # what any JSON number with a fraction or exponent has
CHUNK = 16 << 20  # bytes of a long file that one worker process checks
RESTORED_FROM, PRUNED = "tenant.restored_from", "audit.pruned"  # the lineage (section 2)
LINEAGE_TYPES = (b'tenant.restored_from"', b'audit.pruned"')  # never on the quick path

# The fields of each kind of line (AUDIT_FORMAT.md, section 3) and their domains: "seq" an
# integer 1..2**63-1, "count" an integer >= 0, "time" a real UTC instant written as
# YYYY-MM-DDTHH:MM:SS.ffffffZ, "x?" an x or null.
HEADER = {"type": "str", "format": "int", "tenant_id": "id", "tenant": "name",
          "exported_at": "time", "range": "object", "public_keys": "list"}
RANGE = {"first_seq": "seq?", "last_seq": "seq?", "since": "time?", "until": "time?"}
KEY = {1: {"key_id": "key_id", "public_key": "public_key"},
       2: {"key_id": "key_id", "public_key": "public_key", "valid_from": "time",
           "retired_at": "time?"}}
ROTATION = {"type": "str", "tenant_id": "id", "old_key_id": "key_id", "new_key_id": "key_id",
            "new_public_key": "public_key", "rotated_at": "time", "signature": "signature",
            "new_signature": "signature"}
EVENT = {"type": "str", "seq": "seq", "occurred_at": "time", "actor_type": "actor_type",
         "actor_id": "str?", "actor_name": "str?", "event_type": "name", "target_type": "str?",
         "target_id": "str?", "details": "details", "prev_hash": "hash", "chain_hash": "hash"}
CHECKPOINT = {"type": "str", "tenant_id": "id", "seq": "seq", "chain_hash": "hash",
              "created_at": "time", "signature": "signature", "key_id": "key_id"}
MANIFEST = {"type": "str", "first_seq": "seq?", "last_seq": "seq?", "head_hash": "hash?",
            "events": "count", "checkpoints": "count", "sha256": "hash"}
STATEMENT = {"type": "str", "tenant_id": "id", "tenant": "name", "exported_at": "time",
             "range": "object", "first_seq": "seq?", "last_seq": "seq?", "events": "count",
             "checkpoints": "count", "head_seq": "seq?", "head_hash": "hash?",
             "sha256": "hash", "key_id": "key_id", "signature": "signature"}
PATTERNS = {"hash": "[0-9a-f]{64}", "key_id": "[0-9a-f]{16}", "name": ".+",
            "signature": "[A-Za-z0-9+/]{86}==", "public_key": "[A-Za-z0-9+/]{43}=",
            "time": r"[0-9]{4}-(0[1-9]|1[0-2])-[0-3][0-9]T([01][0-9]|2[0-3]):[0-5][0-9]"
                    r":[0-5][0-9]\.[0-9]{6}Z",
            "actor_type": "|".join(ACTOR_TYPES)}
TIME = re.compile(PATTERNS["time"].encode("ascii"))
ACTOR_TYPE_ENDINGS = tuple(b',"actor_type":"%s"' % name.encode() for name in ACTOR_TYPES)
REAL_DATES = {}  # "YYYY-MM-DD" -> whether that day exists (a cache: logs repeat their days)


class Bad(Exception):
    """The file is not an intact export; the message says where and why."""


class CannotCheck(Exception):
    """The check cannot run (exit 2): a usage or environment problem."""


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(event, prev_hash):
    content = canonical({name: event[name] for name in EVENT_FIELDS}).encode("utf-8")
    return hashlib.sha256(content + prev_hash.encode("ascii")).hexdigest()


def real_date(day):
    """Whether "YYYY-MM-DD" (str or bytes) is a day of the calendar."""
    if day not in REAL_DATES:
        try:
            datetime.date.fromisoformat(day.decode("ascii") if isinstance(day, bytes) else day)
            REAL_DATES[day] = True
        except (ValueError, UnicodeDecodeError):
            REAL_DATES[day] = False
    return REAL_DATES[day]


def valid(kind, value):
    if kind.endswith("?"):
        return value is None or valid(kind[:-1], value)
    if kind in ("int", "seq", "id", "count"):
        low = {"int": None, "seq": 1, "id": 0, "count": 0}[kind]
        return type(value) is int and (low is None or low <= value <= MAX_SEQ)
    if kind in ("object", "list"):
        return isinstance(value, dict if kind == "object" else list)
    if kind == "details":
        return isinstance(value, dict) and not float_in(value)
    return (isinstance(value, str) and (kind == "str" or bool(re.fullmatch(PATTERNS[kind], value)))
            and (kind != "time" or real_date(value[:10])))


def float_in(value, path="details"):
    """Where ``value`` holds a number with a fraction or an exponent (AUDIT_FORMAT.md, section 1,
    rule 5), or None."""
    if isinstance(value, float):
        return path
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, item in items:
        inner = f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]"
        if found := float_in(item, inner):
            return found
    return None


# --- lineage: a tenant restored from another tenant's backup (AUDIT_FORMAT.md, section 2) ---
# The same rule as tenant_runtime/audit_lineage.py, which this script cannot import (it runs
# with the standard library alone); tests/ops/test_audit_lineage.py checks that they agree.

def entries(seq, event_type, details):
    """The restorations the event at ``seq`` records, as (seq, source tenant id):
    ``tenant.restored_from`` its own, ``audit.pruned`` those it carries for the events
    retention removed; no other event any."""
    if not isinstance(details, dict):
        return []
    if event_type == RESTORED_FROM:
        return [(int(seq), int(details["source_tenant_id"]))]
    if event_type == PRUNED:
        return [(int(x["seq"]), int(x["source_tenant_id"])) for x in details.get("lineage") or ()]
    return []


def signer_of(restorations, seq, tenant_id):
    """The tenant id a checkpoint at ``seq`` was signed for: the source named by the nearest
    restoration above it (``restorations`` sorted by seq), else the log's own tenant."""
    return next((source for at, source in restorations if at > seq), tenant_id)


def lineage_of(event, where):
    """``entries`` of a parsed event line, or Bad when its lineage is malformed."""
    details, kind = event["details"], event["event_type"]
    found = [details.get("source_tenant_id")] if kind == RESTORED_FROM else [
        x.get("source_tenant_id") if isinstance(x, dict) else None
        for x in details.get("lineage") or ()] if kind == PRUNED else []
    seqs = [x.get("seq") if isinstance(x, dict) else None
            for x in details.get("lineage") or ()] if kind == PRUNED else []
    if (kind == PRUNED and not valid("list?", details.get("lineage"))) or not all(
            valid("id", v) for v in found) or not all(valid("seq", v) for v in seqs):
        raise Bad(f"{where}: a {kind} event whose lineage is malformed (source_tenant_id must "
                  "be a tenant id, and each carried entry a seq and a source_tenant_id)")
    return entries(event["seq"], kind, details)


def check_fields(obj, spec, where):
    if set(obj) != set(spec):
        raise Bad(f"{where}: expected exactly the fields {', '.join(sorted(spec))}")
    for name, kind in spec.items():
        if kind == "details" and isinstance(obj[name], dict) and (path := float_in(obj[name])):
            raise Bad(f"{where}: {path} is not a whole number (details hold no fractions)")
        if not valid(kind, obj[name]):
            raise Bad(f"{where}: field {name} is not a valid {kind.rstrip('?')} "
                      f"({obj[name]!r:.70})")


def public_key_id(b64, where):
    try:
        raw = base64.b64decode(b64, validate=True)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise Bad(f"{where}: not a base64 Ed25519 public key (32 bytes)")
    return hashlib.sha256(raw).hexdigest()[:16]


def signature_valid(public_key, signature, message):
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        raise CannotCheck("checking checkpoint signatures needs the 'cryptography' package "
                          "(pip install cryptography); the chain alone needs nothing") from None
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


# --- reading ----------------------------------------------------------------------------------

def strict_object(pairs):
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("duplicate key")
    return dict(pairs)


def no_constant(name):
    raise ValueError(f"{name} is not JSON")


def parsed(number, raw):
    """The object on a line; anything malformed or not canonical raises Bad."""
    if len(raw) > MAX_LINE:
        raise Bad(f"line {number}: longer than 16 MiB")
    if not raw.endswith(b"\n"):
        raise Bad(f"line {number}: does not end with a newline (truncated?)")
    try:
        line = raw[:-1].decode("utf-8")
        obj = json.loads(line, object_pairs_hook=strict_object, parse_constant=no_constant)
    except UnicodeDecodeError:
        raise Bad(f"line {number}: not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise Bad(f"line {number}: not valid JSON") from None
    if not isinstance(obj, dict) or canonical(obj) != line:
        raise Bad(f"line {number}: not a JSON object in the canonical encoding")
    return obj


def next_link(raw, prev, seq):
    """The chain_hash (bytes) of an event line that is, untouched, the link after ``prev``
    (bytes) at ``seq``, hashed straight from the line's bytes; None for any other line.

    An event line is its canonical content with three members added where the sorted keys put
    them: ``"chain_hash"`` after ``actor_type``, ``"prev_hash"`` after ``occurred_at`` and
    ``"type"`` last. Cutting them out gives back the content's bytes with no JSON parsing,
    which keeps this script fast on long logs. verify() takes this path only for rows that a
    checkpoint later in the file vouches for: their bytes are bound by SHA-256 to the signed
    chain hash, so they are the canonical bytes Magistrate wrote, and parsing them would prove
    nothing more. Every other line is read in full."""
    i, j = raw.find(b',"chain_hash":"'), raw.rfind(b',"prev_hash":"')
    at_seq = b'","seq":%d,' % seq
    if not (0 < i < j and raw.endswith(EVENT_END) and raw.startswith(b'","details":', i + 79)
            and raw[j + 14:j + 78] == prev and raw.startswith(at_seq, j + 78)
            and in_domain(raw, i, j, j + 78 + len(at_seq))):
        return None
    link = hashlib.sha256(b"".join((raw[:i], raw[i + 80:j], raw[j + 79:-len(EVENT_END)], b"}",
                                    prev))).hexdigest().encode("ascii")
    return link if raw[i + 15:i + 79] == link else None


def in_domain(raw, i, j, seq_end):
    """The cheap part of the domain checks, on an event line's bytes (``i``: where
    ``,"chain_hash":"`` starts, ``j``: where ``,"prev_hash":"`` does, ``seq_end``: where
    ``"target_id":`` must start): UTF-8, a known actor_type, a real occurred_at, details an
    object with no digit followed by ``.``, ``e`` or ``E`` (which every fraction or exponent
    has), a non-empty event_type, and a string or null in the four fields that hold one. A
    line that fails is read in full, which names the problem or, for such characters inside a
    string, accepts it. A lineage event (``tenant.restored_from``, ``audit.pruned``) is always
    read in full too: its details say which tenant the checkpoints below it were signed for."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    k = raw.rfind(b',"event_type":"', i, j)
    return (raw.startswith(b',"occurred_at":"', j - 44)
            and TIME.fullmatch(raw, j - 28, j - 1) is not None
            and real_date(raw[j - 28:j - 18])
            and raw.endswith(ACTOR_TYPE_ENDINGS, 0, i)
            and raw.startswith(b'","details":{', i + 79) and raw[k + 15:k + 16] != b'"'
            and not raw.startswith(LINEAGE_TYPES, k + 15)  # read in full: lineage_of()
            and FLOATISH.search(raw, i + 79, k) is None
            and string_or_null(raw, 12)  # after {"actor_id":
            and string_or_null(raw, value_at(raw, b',"actor_name":', 12))
            and raw.startswith(b'"target_id":', seq_end) and string_or_null(raw, seq_end + 12)
            and string_or_null(raw, value_at(raw, b',"target_type":', seq_end)))


def value_at(raw, name, start):
    """Where the value of the member ``name`` starts (its first match from ``start``), or -1."""
    at = raw.find(name, start)
    return -1 if at < 0 else at + len(name)


def string_or_null(raw, at):
    """Whether the value starting at ``at`` is a string or null (a member found with find():
    before the details only strings come, and after the seq too, and a string cannot hold an
    unescaped quote, so the first match is the member itself)."""
    return at >= 0 and (raw[at:at + 1] == b'"' or raw.startswith(b"null,", at))


def quick_run(path, start, end, vouched, wanted):
    """A worker's share of a long file: from the first line at or after byte ``start`` (past
    the header and the first event, which verify() reads itself), the longest run of lines
    starting before ``end`` that each take the quick path after the one before. Returns
    (first line's offset, the offset after the run, its first seq, that row's prev_hash, rows,
    the last chain_hash, {seq: chain_hash} at the wanted seqs), or None."""
    with open(path, "rb") as f:
        f.seek(max(start - 1, 0))
        for _ in range(2 if start == 0 else 1):
            f.readline(MAX_LINE + 1)
        at = first = f.tell()
        raw = f.readline(MAX_LINE + 1)
        j = raw.rfind(b',"prev_hash":"')
        if j < 0 or not (found := RUN_SEQ.match(raw, j + 78)):
            return None
        seq = first_seq = int(found[1])
        prev = first_prev = raw[j + 14:j + 78]
        hashes = {}
        while at < end and seq <= vouched and (link := next_link(raw, prev, seq)):
            if seq in wanted:
                hashes[seq] = link.decode("ascii")
            at, prev, seq = at + len(raw), link, seq + 1
            raw = f.readline(MAX_LINE + 1)
    rows = seq - first_seq
    return (first, at, first_seq, first_prev, rows, prev, hashes) if rows else None


def checkpoint_seqs(path):
    """First pass: the seqs that checkpoints name, so the second keeps only those hashes and
    knows which rows they vouch for. It reads big blocks and only looks for checkpoint lines
    (the second pass checks them)."""
    seqs, rest = set(), b""
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            block = rest + block  # from the newline before the last, maybe partial, line
            at = block.find(b'\n{"chain_hash":"')
            while at >= 0:
                if found := CHECKPOINT_SEQ.match(block, at):
                    seqs.add(int(found[1]))
                at = block.find(b'\n{"chain_hash":"', at + 1)
            rest = block[max(block.rfind(b"\n"), 0):][-MAX_LINE:]
    return seqs


def digests_before_last_lines(path):
    """{offset: SHA-256 of every byte before it} at the start of each of the file's last two
    lines, where the manifest and the statement must be (for a long file, a worker process
    computes them while the chain is checked)."""
    with open(path, "rb") as f:
        starts, end = [], f.seek(0, 2) - 1  # the search starts before the final newline
        while end > 0 and len(starts) < 2:
            start = max(end - (1 << 16), 0)
            f.seek(start)
            at = f.read(end - start).rfind(b"\n")
            end = start + at if at >= 0 else start
            if at >= 0:
                starts.append(start + at + 1)
        f.seek(0)
        digest, found = hashlib.sha256(), {}
        for stop in sorted({*starts, 0}):
            while (left := stop - f.tell()) > 0:
                digest.update(f.read(min(left, 1 << 20)))
            found[stop] = digest.hexdigest()
    return found


# --- checking ---------------------------------------------------------------------------------

class Export:
    """What the header says, and the keys trusted for this file."""

    def __init__(self, header, options):
        if not header:
            raise Bad("the file is empty")
        if header.get("type") != "header":
            raise Bad("line 1: the first line must be the header")
        check_fields(header, HEADER, "line 1 (header)")
        if header["format"] not in FORMATS:
            raise Bad(f"line 1: format {header['format']} is not supported (this script reads "
                      "1 and 2)")
        if header["format"] == 1 and not options.allow_format_1:
            raise Bad("line 1: a format 1 export (made before signed export statements): "
                      "nothing in it shows that it is complete or that no checkpoint was "
                      "removed; export it again, or pass --allow-format-1 to check it by the "
                      "format 1 rules")
        check_fields(header["range"], RANGE, "line 1 (header range)")
        self.header, self.format, self.tenant_id = header, header["format"], header["tenant_id"]
        self.range = r = header["range"]
        by_seq, by_date = r["first_seq"] or r["last_seq"], r["since"] or r["until"]
        if by_seq and by_date:
            raise Bad("line 1: the range is by seq and by date at once")
        if r["first_seq"] and r["last_seq"] and r["last_seq"] < r["first_seq"]:
            raise Bad("line 1: the range's last_seq is below its first_seq")
        if r["since"] and r["until"] and r["until"] <= r["since"]:
            raise Bad("line 1: the range's until is not after its since")
        self.whole = not (by_seq or by_date)
        self.by_date = bool(by_date)
        self.start = None if by_date else r["first_seq"] or 1  # the seq the rows start at
        self.keys = {}
        for key in header["public_keys"]:
            if not isinstance(key, dict):
                raise Bad("line 1: each public key must be an object")
            check_fields(key, KEY[self.format], "line 1 (header public key)")
            if public_key_id(key["public_key"], "line 1") != key["key_id"]:
                raise Bad(f"line 1: key_id {key['key_id']} does not match its public key")
            if key["key_id"] in self.keys:
                raise Bad(f"line 1: key {key['key_id']} is listed twice")
            self.keys[key["key_id"]] = key
        if self.format == 2:
            listed = list(self.keys.values())
            for before, after in zip(listed, listed[1:], strict=False):
                if before["retired_at"] is None or not (
                        before["valid_from"] < after["valid_from"] == before["retired_at"]):
                    raise Bad(f"line 1: key {after['key_id']} does not take over when key "
                              f"{before['key_id']} is retired (keys are listed oldest first, "
                              "each valid from the moment the one before it retired)")
        self.pinned = options.pinned
        if self.pinned:
            kid, public = next(iter(self.pinned.items()))
            if kid not in self.keys or self.keys[kid]["public_key"] != public:
                raise Bad(f"line 1: the header does not list the pinned key (key_id {kid}): "
                          "this is not an export of the tenant whose key you pinned, or its "
                          "keys were replaced")
        self.rotations, self.trusted = [], None
        self.lineage = set()  # (seq, source tenant id) of every restoration the rows record
        self.rotations_checked = False

    def settle_keys(self):
        """The keys trusted for this file: the pinned one (or, unpinned, the oldest key the
        header lists) and every key a rotation statement links to it, either way."""
        root = next(iter(self.pinned or self.keys), None)
        trusted = {root} if root else set()
        for number, rot in self.rotations:
            where = f"line {number} (key rotation {rot['old_key_id']} to {rot['new_key_id']})"
            old, new = self.keys.get(rot["old_key_id"]), self.keys.get(rot["new_key_id"])
            if old is None or new is None:
                raise Bad(f"{where}: names a key the header does not list")
            if rot["new_public_key"] != new["public_key"]:
                raise Bad(f"{where}: the new public key is not the one the header lists")
            if not (old["retired_at"] == rot["rotated_at"] == new["valid_from"]):
                raise Bad(f"{where}: rotated_at is not when the old key retired and the new "
                          "one became valid")
            signed = canonical({k: v for k, v in rot.items()
                                if k not in ("signature", "new_signature")}).encode("utf-8")
            if not signature_valid(old["public_key"], rot["signature"], signed):
                raise Bad(f"{where}: signature of the old key invalid")
            if not signature_valid(new["public_key"], rot["new_signature"], signed):
                raise Bad(f"{where}: signature of the new key invalid")
        grew = True
        while grew:
            grew = False
            for _, rot in self.rotations:
                pair = {rot["old_key_id"], rot["new_key_id"]}
                if pair & trusted and not pair <= trusted:
                    trusted |= pair
                    grew = True
        for kid in self.keys:
            if kid not in trusted:
                raise Bad(f"line 1: key {kid} is not linked to the "
                          f"{'pinned' if self.pinned else 'oldest'} key by a key rotation "
                          "statement in the file")
        self.trusted = trusted

    def check_rotation_tenants(self):
        """Once the events are read: each rotation was signed for this tenant or, for a copy
        restored from another tenant's backup, for a source its lineage names, in the order of
        the lineage (the oldest source's rotations first; section 2)."""
        if self.rotations_checked:
            return
        self.rotations_checked = True
        order, at = [source for _, source in sorted(self.lineage)] + [self.tenant_id], 0
        for number, rot in self.rotations:
            if rot["tenant_id"] not in order[at:]:
                raise Bad(f"line {number} (key rotation {rot['old_key_id']} to "
                          f"{rot['new_key_id']}): for another tenant (tenant_id "
                          f"{rot['tenant_id']})")
            at = order.index(rot["tenant_id"], at)

    def check_signer(self, kid, when, where):
        if kid not in self.trusted:
            raise Bad(f"{where}: signed by another key (key_id {kid})")
        key = self.keys[kid]
        if self.format == 2 and not (key["valid_from"] <= when and (
                key["retired_at"] is None or when < key["retired_at"])):
            raise Bad(f"{where}: signed by key {kid} at {when}, outside its validity "
                      f"({key['valid_from']} to {key['retired_at'] or 'now'})")
        return key["public_key"]


def check_checkpoint(cp, export, hashes, last_seq):
    at = f"checkpoint at seq {cp['seq']}"
    public = export.check_signer(cp["key_id"], cp["created_at"], at)
    signed = canonical({k: cp[k] for k in ("tenant_id", "seq", "chain_hash", "created_at")})
    if not signature_valid(public, cp["signature"], signed.encode("utf-8")):
        raise Bad(f"{at}: signature invalid")
    restorations = sorted(export.lineage)
    signer = signer_of(restorations, cp["seq"], export.tenant_id)
    if cp["tenant_id"] != signer:
        restored = next((at for at, _ in restorations if at > cp["seq"]), None)
        if restored is not None:
            raise Bad(f"{at}: signed for tenant {cp['tenant_id']}, but the restoration recorded "
                      f"at seq {restored} says the rows below it come from tenant {signer} "
                      "(the lineage was changed, or the checkpoint is another tenant's)")
        raise Bad(f"{at}: for another tenant (tenant_id {cp['tenant_id']}; "
                  f"this log is tenant {export.tenant_id})")
    if cp["created_at"] > export.header["exported_at"]:
        raise Bad(f"{at}: made at {cp['created_at']}, after the export itself")
    if last_seq is None or cp["seq"] > last_seq:
        raise Bad(f"log shorter than checkpoint at seq {cp['seq']} (it ends at seq {last_seq})")
    if cp["seq"] not in hashes:
        raise Bad(f"{at}: before the first row of this export, so it cannot be checked")
    if hashes[cp["seq"]] != cp["chain_hash"]:
        raise Bad(f"{at}: the log differs (its chain_hash at seq {cp['seq']} is not the "
                  "signed one: rows up to there were changed)")


def check_statement(st, export, manifest, digest):
    """The signed export statement (AUDIT_FORMAT.md, section 3): who signed it, that the file
    reaches the head it names, and that it says what the file holds."""
    public = export.check_signer(st["key_id"], st["exported_at"], "statement")
    signed = canonical({k: v for k, v in st.items() if k != "signature"}).encode("utf-8")
    if not signature_valid(public, st["signature"], signed):
        raise Bad("statement: signature invalid")
    for name in ("tenant_id", "tenant", "exported_at", "range"):
        if st[name] != export.header[name]:
            raise Bad(f"statement: {name} is {st[name]!r:.70} but the header says "
                      f"{export.header[name]!r:.70}")
    head, last, r = st["head_seq"], manifest["last_seq"], export.range
    if (head is None) != (st["head_hash"] is None) or (last is not None and (
            head is None or head < last)):
        raise Bad(f"statement: head_seq {head} does not cover the rows of the file")
    if r["until"] is None and not (export.by_date and last is None):
        # the rows must reach the head, or the range's last_seq (where a range by date ends
        # is not written anywhere a verifier can see)
        end = head if r["last_seq"] is None or head is None else min(head, r["last_seq"])
        if last != end and not (last is None and (end is None or end < (r["first_seq"] or 1))):
            raise Bad(f"statement: the tenant's chain had reached seq {head} when this export "
                      f"was made, so the file should end at seq {end}, but it ends at "
                      f"{'no row' if last is None else f'seq {last}'}: rows were cut off")
    if head is not None and head == last and st["head_hash"] != manifest["head_hash"]:
        raise Bad(f"statement: the tenant's head at seq {head} had chain_hash "
                  f"{st['head_hash']}, not the file's last row's (rows were rewritten)")
    for name in ("first_seq", "last_seq"):
        if st[name] != manifest[name]:
            raise Bad(f"statement: {name} is {st[name]} but the file's is {manifest[name]}")
    for name in ("events", "checkpoints"):
        if st[name] != manifest[name]:
            raise Bad(f"statement: {st[name]} {name} were exported but the file has "
                      f"{manifest[name]}: {name} were removed or added")
    if st["sha256"] != digest:
        raise Bad(f"statement: sha256 is {st['sha256']} but the file before it hashes to "
                  f"{digest} (a line was changed, added or removed)")


class Options:
    """What the command line asks: a pinned key ({key_id: base64}), a checkpoint kept outside
    the export, and whether format 1 exports are checked (by their weaker rules)."""

    def __init__(self, pinned=None, external=None, allow_format_1=False):
        self.pinned, self.external, self.allow_format_1 = pinned, external, allow_format_1


def verify(path, pinned=None, external=None, chunk=CHUNK, allow_format_1=False):
    """The summary lines of an intact export; raises Bad at the first problem. ``pinned``:
    {key_id: public key} at the root of the keys trusted; ``external``: a checkpoint.

    A file longer than ``chunk`` bytes is shared out: worker processes hash it for the
    manifest and the statement, and check runs of rows (quick_run), while this process reads
    it in order, joining on each run that follows the row before and reading everything else
    itself."""
    options = Options(pinned, external, allow_format_1)
    size = os.path.getsize(path)
    pool = ProcessPoolExecutor(os.cpu_count() or 1) if size > chunk else None
    try:
        digests = (pool.submit(digests_before_last_lines, path).result if pool
                   else functools.partial(digests_before_last_lines, path))
        wanted = checkpoint_seqs(path) | ({external["seq"]} if external else set())
        vouched = max(wanted, default=0)  # rows up to this seq may take the quick path
        runs = [pool.submit(quick_run, path, start, start + chunk, vouched, wanted)
                for start in range(0, size, chunk)] if pool else []
        runs = {run[0]: run for run in (future.result() for future in runs) if run}
        with open(path, "rb") as f:
            return check_file(f, options, wanted, vouched, runs, digests)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def check_file(f, options, wanted, vouched, runs, digests):
    number, raw = 1, f.readline(MAX_LINE + 1)
    export = Export(raw and parsed(number, raw), options)
    if export.by_date:
        vouched = 0  # every row is read in full: its time is checked against the range
    rows, first, last, prev, hashes, checkpoints = 0, None, None, None, {}, []
    gap = None  # a jump in seq is a gap, unless the next row shows a reordering
    expected = export.start
    while True:
        quick = rows and expected <= vouched and not (gap or checkpoints)
        run = quick and runs.get(f.tell())
        if run and run[2:4] == (expected, prev):  # a worker checked these rows: join them on
            _, stop, _, _, count, prev, run_hashes = run
            number, rows, last = number + count, rows + count, expected + count - 1
            expected = last + 1
            hashes.update(run_hashes)
            f.seek(stop)
            continue
        at, raw = f.tell(), f.readline(MAX_LINE + 1)
        if not raw:
            raise Bad("file ends without a manifest (truncated?)")
        number += 1
        if quick and (link := next_link(raw, prev, expected)):
            rows, last, prev, expected = rows + 1, expected, link, expected + 1
            if last in wanted:
                hashes[last] = link.decode("ascii")
            continue
        obj = parsed(number, raw)
        kind = obj.get("type")
        if gap and not (kind == "event" and valid("seq", obj.get("seq")) and obj["seq"] <= last):
            raise Bad(gap)
        if kind == "key_rotation" and export.format == 2:
            check_fields(obj, ROTATION, f"line {number} (key rotation)")
            if export.trusted is not None:
                raise Bad(f"line {number}: a key rotation after the events (rotations come "
                          "right after the header)")
            export.rotations.append((number, obj))
            continue
        if export.trusted is None:
            export.settle_keys()
        if kind == "event":
            seq = obj.get("seq")
            where = f"row {rows + 1} (seq {seq})" if valid("seq", seq) else \
                f"row {rows + 1} (line {number})"
            check_fields(obj, EVENT, where)
            if checkpoints:
                raise Bad(f"{where}: an event after the checkpoints (line {number})")
            rows += 1
            intact = event_hash(obj, obj["prev_hash"]) == obj["chain_hash"]
            if gap and not intact:
                raise Bad(gap)
            if rows == 1:  # the anchor: genesis, or the prev_hash of the first row
                if expected is None or (seq > expected and seq - 1 in wanted):
                    expected = seq  # a date range, or a log pruned up to a checkpoint
                first = seq
                prev = (GENESIS_HASH if expected == 1 else obj["prev_hash"]).encode("ascii")
                hashes[seq - 1] = obj["prev_hash"]
            if seq == expected and obj["prev_hash"].encode("ascii") != prev:
                raise Bad(f"{where}: previous hash mismatch (prev_hash is not the chain_hash "
                          "of the row before)")
            if not intact:
                raise Bad(f"{where}: content changed (chain_hash does not match its content)")
            if last is not None and seq < last:
                raise Bad(f"{where}: reordered (seq {seq} after {last})")
            if last is not None and seq == last:
                raise Bad(f"{where}: seq {seq} repeated (a row was inserted or copied)")
            check_in_range(obj, export.range, where)
            if obj["event_type"] in (RESTORED_FROM, PRUNED):
                export.lineage.update(lineage_of(obj, where))
            gap = f"{where}: gap in seq (expected {expected}, found {seq})" \
                if seq != expected else None
            if seq in wanted:
                hashes[seq] = obj["chain_hash"]
            last, prev, expected = seq, obj["chain_hash"].encode("ascii"), seq + 1
        elif kind == "checkpoint":
            check_fields(obj, CHECKPOINT, f"line {number} (checkpoint)")
            export.check_rotation_tenants()
            if checkpoints and obj["seq"] <= checkpoints[-1]:
                raise Bad(f"checkpoint at seq {obj['seq']}: "
                          + ("repeated (there is one checkpoint per seq)"
                             if obj["seq"] == checkpoints[-1] else
                             f"out of order (after the checkpoint at seq {checkpoints[-1]})"))
            check_checkpoint(obj, export, hashes, last)
            checkpoints.append(obj["seq"])
        elif kind == "manifest":
            export.check_rotation_tenants()
            break
        else:
            raise Bad(f"line {number}: unknown line type {kind!r:.40}")
    manifest, manifest_at = obj, at
    check_fields(manifest, MANIFEST, f"line {number} (manifest)")
    at, raw = f.tell(), f.readline(MAX_LINE + 1)
    statement = raw and parsed(number + 1, raw)
    if statement and (statement.get("type") != "statement" or export.format == 1):
        raise Bad(f"line {number + 1}: more lines after the manifest")
    if statement:
        check_fields(statement, STATEMENT, f"line {number + 1} (statement)")
        if f.readline(1):
            raise Bad(f"line {number + 2}: more lines after the statement")
    head = prev and prev.decode("ascii")
    found = {"type": "manifest", "first_seq": first, "last_seq": last, "head_hash": head,
             "events": rows, "checkpoints": len(checkpoints),
             "sha256": digests()[manifest_at]}
    for name in MANIFEST:
        if manifest[name] != found[name]:
            raise Bad(f"manifest: {name} is {manifest[name]!r:.70} but the file has "
                      f"{found[name]!r}")
    if export.trusted and export.whole and not checkpoints:
        raise Bad("a whole-log export of a tenant with a checkpoint key, but no checkpoint in "
                  "it: its checkpoints were removed (a rewritten log would look like this)")
    if statement:
        check_statement(statement, export, manifest, digests()[at])
    elif export.trusted and export.format == 2:
        raise Bad("file ends after the manifest without the signed export statement (it was "
                  "removed, or the file was cut)")
    external = options.external
    if external:
        check_checkpoint(external, export, hashes, last)
    return summary(export, rows, first, head, checkpoints, statement, external)


def check_in_range(event, r, where):
    if r["last_seq"] is not None and event["seq"] > r["last_seq"]:
        raise Bad(f"{where}: after the range's last_seq {r['last_seq']}")
    if r["since"] is not None and event["occurred_at"] < r["since"]:
        raise Bad(f"{where}: occurred before the range's since ({r['since']})")
    if r["until"] is not None and event["occurred_at"] >= r["until"]:
        raise Bad(f"{where}: occurred at or after the range's until ({r['until']})")


def summary(export, rows, first, head, checkpoints, statement, external):
    if not rows:
        chain = "chain: no rows in this range"
    elif first == 1:
        chain = "chain: from genesis"
    elif first - 1 in checkpoints:
        chain = (f"chain: starts at seq {first}, after the checkpoint at seq {first - 1} that "
                 "vouches for its prev_hash (earlier events pruned or not exported)")
    else:
        chain = (f"chain: starts at seq {first} from its prev_hash, "
                 + ("which the checkpoints vouch for" if checkpoints or statement
                    else "taken on trust"))
    signer = "the pinned key" if export.pinned else ("a key named in the file (pin the "
                                                     "tenant's key with --pin-key to know it "
                                                     "is theirs)")
    if len(export.trusted) > 1:
        signer += f", through {len(export.rotations)} key rotation(s)"
    every = checkpoints + ([external["seq"]] if external else [])
    lines = [chain, f"checkpoints: {len(every)} valid, up to seq {max(every)}, signed by "
                    f"{signer}" if every else
             "checkpoints: none (a consistent rewrite of the whole log would not show; use "
             "--checkpoint or an export with checkpoints)"]
    if statement:
        lines.append(f"statement: signed at {statement['exported_at']}, when the tenant's chain "
                     f"had reached seq {statement['head_seq']}; the file holds everything it "
                     "should up to then")
    elif export.format == 1:
        lines.append("statement: none (a format 1 export: a log cut back to an earlier "
                     "checkpoint, with the later ones removed, would not show)")
    else:
        lines.append("statement: none (no checkpoint key in this export: nothing is signed; "
                     "pin the tenant's key to require one)")
    return [*lines, f"OK {rows} rows, head {head or 'none'}"]


def read_checkpoint(path):
    """A checkpoint kept outside the export: exactly a checkpoint line, as the checkpoint
    webhook delivers it (AUDIT_FORMAT.md, section 2), with or without its final newline."""
    with open(path, "rb") as f:
        data = f.read(1024 * 1024)
    try:
        cp = json.loads(data.decode("utf-8"), object_pairs_hook=strict_object,
                        parse_constant=no_constant)
        if not isinstance(cp, dict) or cp.get("type") != "checkpoint":
            raise ValueError("not a checkpoint")
        check_fields(cp, CHECKPOINT, path)
        return cp
    except (ValueError, RecursionError, Bad):
        raise CannotCheck(f"--checkpoint {path}: not a checkpoint line (the fields type, "
                          "tenant_id, seq, chain_hash, created_at, signature, key_id, with "
                          "valid values)") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description="Verify an exported Magistrate audit log.")
    parser.add_argument("export", help="the .jsonl file exported by Magistrate")
    parser.add_argument("--pin-key", help="the tenant's (or the platform's) checkpoint public "
                                          "key (base64), learnt out of band")
    parser.add_argument("--checkpoint", help="a checkpoint (JSON) that you kept yourself")
    parser.add_argument("--allow-format-1", action="store_true",
                        help="check an export made before signed statements (format 1)")
    args = parser.parse_args(argv)
    try:
        pinned = None
        if args.pin_key:
            try:
                pinned = {public_key_id(args.pin_key, "--pin-key"): args.pin_key}
            except Bad as exc:
                raise CannotCheck(str(exc)) from None
        external = read_checkpoint(args.checkpoint) if args.checkpoint else None
        print("\n".join(verify(args.export, pinned, external,
                               allow_format_1=args.allow_format_1)))
        return 0
    except Bad as exc:
        print(f"FAIL {exc}")
        return 1
    except (CannotCheck, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the promise: a clear message, never a traceback
        print(f"FAIL the file could not be read as an export ({type(exc).__name__}: {exc})")
        return 1


if __name__ == "__main__":
    sys.exit(main())
