#!/usr/bin/env python3
"""Verify an exported Magistrate audit log, offline, on your own machine.

    python3 verify_audit_chain.py EXPORT.jsonl [--pin-key BASE64] [--checkpoint FILE]

The format is specified in AUDIT_FORMAT.md, next to this script. The hash chain is checked with
the Python standard library alone; checkpoint signatures (Ed25519) need the `cryptography`
package, and the script says so when it is missing. Memory stays small for any size: a first
pass notes which seqs the checkpoints name, then the file is read line by line. A long file is
also shared out to worker processes, one per CPU (see verify()).

Prints "OK <rows> rows, head <hash>" and exits 0, or "FAIL <the first problem>" and exits 1.
Exit 2: the command line or this machine is the problem (no such file, bad key, no cryptography).
"""

import argparse
import base64
import functools
import hashlib
import json
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor

GENESIS_HASH = "0" * 64
EVENT_FIELDS = ("seq", "occurred_at", "actor_type", "actor_id", "actor_name", "event_type",
                "target_type", "target_id", "details")
MAX_LINE = 16 * 1024 * 1024
CHECKPOINT_SEQ = re.compile(rb'\n{"chain_hash":"[0-9a-f]{64}","created_at":"[^"\\n]*",'
                            rb'"key_id":"[0-9a-f]{16}","seq":([0-9]{1,18}),')
EVENT_END = b',"type":"event"}\n'
RUN_SEQ = re.compile(rb'","seq":([1-9][0-9]{0,17}),')
CHUNK = 16 << 20  # bytes of a long file that one worker process checks

# The fields of each kind of line. "str?" is a string or null; "seq" an integer >= 1.
HEADER = {"type": "str", "format": "int", "tenant_id": "int", "tenant": "str",
          "exported_at": "time", "range": "object", "public_keys": "list"}
RANGE = {"first_seq": "seq?", "last_seq": "seq?", "since": "time?", "until": "time?"}
EVENT = {"type": "str", "seq": "seq", "occurred_at": "time", "actor_type": "str",
         "actor_id": "str?", "actor_name": "str?", "event_type": "str", "target_type": "str?",
         "target_id": "str?", "details": "object", "prev_hash": "hash", "chain_hash": "hash"}
CHECKPOINT = {"type": "str", "tenant_id": "int", "seq": "seq", "chain_hash": "hash",
              "created_at": "time", "signature": "str", "key_id": "key_id"}
MANIFEST = ("type", "first_seq", "last_seq", "head_hash", "events", "checkpoints", "sha256")
PATTERNS = {"hash": "[0-9a-f]{64}", "key_id": "[0-9a-f]{16}",
            "time": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"}


class Bad(Exception):
    """The file is not an intact export; the message says where and why."""


class CannotCheck(Exception):
    """The check cannot run (exit 2): a usage or environment problem."""


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(event, prev_hash):
    content = canonical({name: event[name] for name in EVENT_FIELDS}).encode("utf-8")
    return hashlib.sha256(content + prev_hash.encode("ascii")).hexdigest()


def valid(kind, value):
    if kind.endswith("?"):
        return value is None or valid(kind[:-1], value)
    if kind in ("int", "seq"):
        return type(value) is int and (kind == "int" or value >= 1)
    if kind in ("object", "list"):
        return isinstance(value, dict if kind == "object" else list)
    return isinstance(value, str) and (kind == "str" or re.fullmatch(PATTERNS[kind], value))


def check_fields(obj, spec, where):
    if set(obj) != set(spec):
        raise Bad(f"{where}: expected exactly the fields {', '.join(sorted(spec))}")
    for name, kind in spec.items():
        if not valid(kind, obj[name]):
            raise Bad(f"{where}: field {name} is not a valid {kind} ({obj[name]!r:.70})")


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
    if not (0 < i < j and raw.endswith(EVENT_END) and raw.startswith(b'","details":', i + 79)
            and raw[j + 14:j + 78] == prev and raw.startswith(b'","seq":%d,' % seq, j + 78)):
        return None
    link = hashlib.sha256(b"".join((raw[:i], raw[i + 80:j], raw[j + 79:-len(EVENT_END)], b"}",
                                    prev))).hexdigest().encode("ascii")
    return link if raw[i + 15:i + 79] == link else None


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


def digest_before_last_line(path):
    """SHA-256 of the file up to its last line, where the manifest must be (for a long file, a
    worker process computes it while the chain is checked)."""
    with open(path, "rb") as f:
        end = f.seek(0, 2) - 1  # the last line starts after the last newline before this
        while end > 0:
            start = max(end - (1 << 16), 0)
            f.seek(start)
            at = f.read(end - start).rfind(b"\n")
            end = start + at + 1 if at >= 0 else start
            if at >= 0:
                break
        f.seek(0)
        digest = hashlib.sha256()
        while (left := max(end, 0) - f.tell()) > 0:
            digest.update(f.read(min(left, 1 << 20)))
    return digest.hexdigest()


# --- checking ---------------------------------------------------------------------------------

def read_header(header, pinned):
    """The tenant id, the seq the rows must start at (None: any) and the trusted keys."""
    if not header:
        raise Bad("the file is empty")
    if header.get("type") != "header":
        raise Bad("line 1: the first line must be the header")
    check_fields(header, HEADER, "line 1 (header)")
    check_fields(header["range"], RANGE, "line 1 (header range)")
    if header["format"] != 1:
        raise Bad(f"line 1: format {header['format']} is not supported (this script reads 1)")
    keys = {}
    for key in header["public_keys"]:
        if not isinstance(key, dict) or set(key) != {"key_id", "public_key"}:
            raise Bad("line 1: each public key must have exactly key_id and public_key")
        if public_key_id(key["public_key"], "line 1") != key["key_id"]:
            raise Bad(f"line 1: key_id {key['key_id']!r:.40} does not match its public key")
        keys[key["key_id"]] = key["public_key"]
    if pinned:  # then only the pinned key counts, whatever the file names
        keys = pinned
    wanted = header["range"]
    return header["tenant_id"], None if wanted["since"] else wanted["first_seq"] or 1, keys


def check_checkpoint(cp, keys, tenant_id, hashes, last_seq):
    at = f"checkpoint at seq {cp['seq']}"
    if cp["key_id"] not in keys:
        raise Bad(f"{at}: signed by another key (key_id {cp['key_id']})")
    signed = canonical({k: cp[k] for k in ("tenant_id", "seq", "chain_hash", "created_at")})
    if not signature_valid(keys[cp["key_id"]], cp["signature"], signed.encode("utf-8")):
        raise Bad(f"{at}: signature invalid")
    if cp["tenant_id"] != tenant_id:
        raise Bad(f"{at}: for another tenant (tenant_id {cp['tenant_id']}; "
                  f"this log is tenant {tenant_id})")
    if last_seq is None or cp["seq"] > last_seq:
        raise Bad(f"log shorter than checkpoint at seq {cp['seq']} (it ends at seq {last_seq})")
    if cp["seq"] not in hashes:
        raise Bad(f"{at}: before the first row of this export, so it cannot be checked")
    if hashes[cp["seq"]] != cp["chain_hash"]:
        raise Bad(f"{at}: the log differs (its chain_hash at seq {cp['seq']} is not the "
                  "signed one: rows up to there were changed)")


def verify(path, pinned=None, external=None, chunk=CHUNK):
    """The summary lines of an intact export; raises Bad at the first problem. ``pinned``:
    {key_id: public key} that must have signed every checkpoint; ``external``: a checkpoint.

    A file longer than ``chunk`` bytes is shared out: worker processes hash it for the
    manifest and check runs of rows (quick_run) while this process reads it in order, joining
    on each run that follows the row before and reading everything else itself."""
    size = os.path.getsize(path)
    pool = ProcessPoolExecutor(os.cpu_count() or 1) if size > chunk else None
    try:
        file_digest = (pool.submit(digest_before_last_line, path).result if pool
                       else functools.partial(digest_before_last_line, path))
        wanted = checkpoint_seqs(path) | ({external["seq"]} if external else set())
        vouched = max(wanted, default=0)  # rows up to this seq may take the quick path
        runs = [pool.submit(quick_run, path, start, start + chunk, vouched, wanted)
                for start in range(0, size, chunk)] if pool else []
        runs = {run[0]: run for run in (future.result() for future in runs) if run}
        with open(path, "rb") as f:
            return check_file(f, pinned, external, wanted, vouched, runs, file_digest)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def check_file(f, pinned, external, wanted, vouched, runs, file_digest):
    number, raw = 1, f.readline(MAX_LINE + 1)
    tenant_id, expected, keys = read_header(raw and parsed(number, raw), pinned)
    rows, first, last, prev, hashes, checkpoints = 0, None, None, None, {}, []
    gap = None  # a jump in seq is a gap, unless the next row shows a reordering
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
        raw = f.readline(MAX_LINE + 1)
        if not raw:
            raise Bad("file ends without a manifest (truncated?)")
        number += 1
        if quick and (link := next_link(raw, prev, expected)):
            rows, last, prev, expected = rows + 1, expected, link, expected + 1
            if last in wanted:
                hashes[last] = link.decode("ascii")
            continue
        obj = parsed(number, raw)
        if gap and not (obj.get("type") == "event" and valid("seq", obj.get("seq"))
                        and obj["seq"] <= last):
            raise Bad(gap)
        if obj.get("type") == "event":
            check_fields(obj, EVENT, f"line {number} (event)")
            if checkpoints:
                raise Bad(f"line {number}: an event after the checkpoints")
            rows += 1
            seq, where = obj["seq"], f"row {rows} (seq {obj['seq']})"
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
            gap = f"{where}: gap in seq (expected {expected}, found {seq})" \
                if seq != expected else None
            if seq in wanted:
                hashes[seq] = obj["chain_hash"]
            last, prev, expected = seq, obj["chain_hash"].encode("ascii"), seq + 1
        elif obj.get("type") == "checkpoint":
            check_fields(obj, CHECKPOINT, f"line {number} (checkpoint)")
            check_checkpoint(obj, keys, tenant_id, hashes, last)
            checkpoints.append(obj["seq"])
        elif obj.get("type") == "manifest":
            break
        else:
            raise Bad(f"line {number}: unknown line type {obj.get('type')!r:.40}")
    if set(obj) != set(MANIFEST):
        raise Bad(f"line {number} (manifest): expected exactly the fields "
                  f"{', '.join(sorted(MANIFEST))}")
    if f.readline(1):
        raise Bad(f"line {number + 1}: more lines after the manifest")
    head = prev and prev.decode("ascii")
    found = {"type": "manifest", "first_seq": first, "last_seq": last, "head_hash": head,
             "events": rows, "checkpoints": len(checkpoints), "sha256": file_digest()}
    for name in MANIFEST:
        if obj[name] != found[name] or type(obj[name]) is not type(found[name]):
            raise Bad(f"manifest: {name} is {obj[name]!r:.70} but the file has {found[name]!r}")
    if external:
        check_checkpoint(external, keys, tenant_id, hashes, last)
        checkpoints.append(external["seq"])
    return summary(rows, first, head, checkpoints, pinned=bool(pinned))


def summary(rows, first, head, checkpoints, pinned):
    if not rows:
        chain = "chain: no rows in this range"
    elif first == 1:
        chain = "chain: from genesis"
    elif first - 1 in checkpoints:
        chain = (f"chain: starts at seq {first}, after the checkpoint at seq {first - 1} that "
                 "vouches for its prev_hash (earlier events pruned or not exported)")
    else:
        chain = (f"chain: starts at seq {first} from its prev_hash, "
                 + ("which the checkpoints vouch for" if checkpoints else "taken on trust"))
    signer = "the pinned key" if pinned else ("a key named in the file (pin the tenant's key "
                                              "with --pin-key to know it is theirs)")
    signed = (f"checkpoints: {len(checkpoints)} valid, up to seq {max(checkpoints)}, signed "
              f"by {signer}" if checkpoints else "checkpoints: none (a consistent rewrite of "
              "the whole log would not show; use --checkpoint or an export with checkpoints)")
    return [chain, signed, f"OK {rows} rows, head {head or 'none'}"]


def read_checkpoint(path):
    """A checkpoint kept outside the export: a JSON object with (at least) its six fields."""
    with open(path, "rb") as f:
        data = f.read(1024 * 1024)
    try:
        obj = json.loads(data.decode("utf-8"))
        cp = {"type": "checkpoint", **{k: obj.get(k) for k in CHECKPOINT if k != "type"}}
        check_fields(cp, CHECKPOINT, path)
        return cp
    except (ValueError, RecursionError, AttributeError, Bad):
        raise CannotCheck(f"--checkpoint {path}: not a JSON object with the fields tenant_id, "
                          "seq, chain_hash, created_at, signature, key_id") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description="Verify an exported Magistrate audit log.")
    parser.add_argument("export", help="the .jsonl file exported by Magistrate")
    parser.add_argument("--pin-key", help="the tenant's public key (base64) for checkpoints")
    parser.add_argument("--checkpoint", help="a checkpoint (JSON) that you kept yourself")
    args = parser.parse_args(argv)
    try:
        pinned = None
        if args.pin_key:
            try:
                pinned = {public_key_id(args.pin_key, "--pin-key"): args.pin_key}
            except Bad as exc:
                raise CannotCheck(str(exc)) from None
        external = read_checkpoint(args.checkpoint) if args.checkpoint else None
        print("\n".join(verify(args.export, pinned, external)))
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
