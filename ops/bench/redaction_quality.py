"""Benchmark: how well ``standard`` redaction finds values however they are written, and how
often it changes text that holds none.

A held-out corpus, generated here (seeded, deterministic) and used by no test, so that nothing
was tuned on it: its own sentence templates, its own names (some of them not in the name lists,
to show what the lists miss), its own e-mail addresses, SSNs, card and phone numbers. Each value
is written in each *form* of the outside review's finding (issue 15, finding 5): other dashes,
dots and slashes; digits of other scripts; names in capitals, in lowercase, with Cyrillic or
Greek look-alike letters; percent-encoded, as HTML character references, in base64.

- recall per form: the share of sentences in which every character of the injected value lies
  inside a redacted entity (a value cut in half counts as missed);
- clean sentences changed: the share of sentences without any value (prose, version numbers,
  dates, invoice numbers, places and products named after people, encoded text holding no
  value...) in which anything was redacted, per kind and overall;
- time: per-call redaction time of the sentences, and of 2 KB prompts made of them, in CPU
  time of this process (``time.process_time``), so that other work on a shared machine does
  not inflate it.

Prints one JSON object on stdout (progress goes to stderr).
Run: ``.venv/bin/python ops/bench/redaction_quality.py`` from the repository root (about a
minute; no servers).
"""

from __future__ import annotations

import base64
import json
import os
import platform
import random
import statistics
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from tenant_runtime.redaction import Profile, redact_text  # noqa: E402

SEED = 15_05_2026
PER_FORM = 150  # sentences per (value kind, form)
CLEAN_PER_KIND = 150
PROMPT_BYTES = 2048
PROMPTS = 100

# names of the corpus; the last ones are in no list of the name scan
FIRST = ["Deborah", "Kenneth", "Sandra", "Raymond", "Katherine", "Gregory", "Pamela", "Dennis",
         "Rebecca", "Walter", "Cynthia", "Harold", "Angela", "Douglas", "Brenda", "Lawrence",
         "Theresa", "Philip", "Evelyn", "Vincent"]
LAST = ["Henderson", "Coleman", "Patterson", "Jenkins", "Perry", "Powell", "Sullivan",
        "Russell", "Ortiz", "Jenkins", "Butler", "Barnes", "Fisher", "Simmons", "Foster",
        "Gonzales", "Bryant", "Alexander", "Griffin", "Hayes"]
UNLISTED = [("Oluwaseun", "Adebayo"), ("Siddharth", "Raghunathan"), ("Xiaoming", "Zhou"),
            ("Thandiwe", "Nkosi"), ("Kalani", "Kahananui")]
DOMAINS = ["northwind.test", "contoso-mail.test", "fabrikam.example", "mailhost.example.org"]

TEMPLATES = [
    "Forwarding the ticket from {v} about the refund that never arrived.",
    "Per our call, update the record for {v} before the audit on Monday.",
    "The intake form lists {v} as the emergency contact; please verify it.",
    "Escalated: customer {v} reports being billed twice for March.",
    "Attach {v} to the claim file and close the duplicate.",
    '{{"customer": "{v}", "status": "pending", "retries": 2}}',
    "INFO 2026-03-02T10:14:07Z lookup for {v} completed in 41 ms",
    "<tr><td>Contact</td><td>{v}</td></tr>",
    "Ref: {v} (copied from the scanned letter)",
    "can u check whats going on with {v} pls",
]

CLEAN: dict[str, list[str]] = {
    "prose": [
        "The migration finished overnight and the dashboards look normal again.",
        "Could you tighten the wording of the second paragraph and drop the last line?",
        "We will mark the old endpoint as deprecated once traffic moves over.",
        "Hope the new onboarding guide helps; the grace period ends next week.",
        "Draft a short apology for the delayed shipment and offer free returns.",
        "the nightly job keeps timing out, can someone take a look",
        "RELEASE FREEZE STARTS THURSDAY. ONLY SECURITY FIXES AFTER THAT.",
        "Rose gold and jade green are the new colour options this season.",
        "Summer interns will shadow the support team for two weeks.",
        "Bill the customer only after the warranty check is done.",
    ],
    "versions": [
        "Bump the SDK from 4.18.2 to 4.19.0 and rerun the suite.",
        "Kernel 6.8.0-45 and glibc 2.39 are required on the build hosts.",
        "Roll back to v3.7.11 if v3.8.0 still leaks memory.",
        "Chrome 126.0.6478.127 renders the page correctly.",
        "Schema version 2024.06.1 replaces 2023.12.4.",
    ],
    "dates": [
        "The lease runs from 2026-04-01 through 2027-03-31.",
        "Submit the report by 11/30/2026; the review is on 12.12.2026.",
        "Payroll closes on 25 June 2026 and pays on June 30, 2026.",
        "Logs from 2026/05/17 to 2026/05/19 were archived.",
        "Next maintenance window: Sat 14 Nov, 02:00-04:00 UTC.",
    ],
    "invoices": [
        "Invoice INV-88231-B is overdue by 14 days.",
        "Credit note CN/2026/0193 offsets invoice 2026-0457.",
        "Order #5530192 shipped in 3 parcels, tracking 1Z999AA10123456784.",
        "Quote Q-7781, PO 4500018823 and receipt R-2026-11-0042 attached.",
        "Batch 2026-118-0457 failed validation at row 311.",
    ],
    "places": [
        "The conference moves to San Diego next spring.",
        "Our warehouse in Santa Barbara ships to St. Paul and Fort Collins.",
        "She relocated from Lake Tahoe to Mount Vernon.",
        "Flights via San Antonio are cheaper than via Virginia Beach.",
        "The Charlotte office handles the east coast accounts.",
    ],
    "products": [
        "Share the deck on Google Meet or Microsoft Teams, whichever works.",
        "Ask Alexa to set a timer, or ask Claude to summarize the notes.",
        "Export the sheet from Google Sheets into Adobe Acrobat.",
        "Build it in Visual Studio and deploy with Jenkins.",
        "Morgan Stanley and Wells Fargo published their outlooks.",
    ],
    "numbers": [
        "Latency fell from 412 ms to 188 ms at the 99th percentile.",
        "The account grew 12.5% to $1,284,300.17 this quarter.",
        "Serial 2210-8841-77 and lot 55.12.3300 are affected.",
        "Dial extension 4471 and enter code 883-21 when asked.",
        "Coordinates 37.7749, -122.4194 with an error of 0.002.",
    ],
    "encoded": [
        "Fetch https://api.example.com/v2/items?filter=status%3Dopen&sort=-created.",
        "The template escapes &lt;b&gt; as &amp;lt;b&amp;gt; &mdash; by design.",
        "Authorization: Basic dXNlcm5hbWU6cGFzc3dvcmQ= is rejected.",
        "The blob aGVsbG8gZnJvbSB0aGUgYnVpbGQgc2VydmVy decodes to a greeting.",
        "Commit 4f9c2ab1e07d5c3b9a8e6f1d2c3b4a5e6f7a8b9c fixed it.",
        "Request 9b2e6f1c-3d4a-4e5b-8c7d-0a1b2c3d4e5f timed out.",
    ],
}

SCRIPTS = {"arabic-indic": 0x660, "extended arabic-indic": 0x6F0, "devanagari": 0x966,
           "bengali": 0x9E6, "fullwidth": 0xFF10}
LOOK_ALIKE_CYRILLIC = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440",
                       "c": "\u0441", "x": "\u0445", "y": "\u0443", "A": "\u0410",
                       "B": "\u0412", "E": "\u0415", "K": "\u041a", "M": "\u041c",
                       "H": "\u041d", "O": "\u041e", "P": "\u0420", "C": "\u0421",
                       "T": "\u0422"}
LOOK_ALIKE_GREEK = {"o": "\u03bf", "a": "\u03b1", "A": "\u0391", "B": "\u0392", "E": "\u0395",
                    "K": "\u039a", "M": "\u039c", "N": "\u039d", "O": "\u039f", "P": "\u03a1",
                    "T": "\u03a4", "H": "\u0397", "Z": "\u0396", "I": "\u0399"}


# ------------------------------------------------------------------------------- values


def luhn_check_digit(body: str) -> str:
    for check in "0123456789":
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch)
            if i % 2:
                d = d * 2 - 9 if d > 4 else d * 2
            total += d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST).lower(), rng.choice(LAST).lower()
    local = rng.choice([f"{first}.{last}", f"{first[0]}{last}{rng.randint(1, 99)}",
                        f"{last}_{first}", f"{first}+billing"])
    return f"{local}@{rng.choice(DOMAINS)}"


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def card(rng: random.Random) -> str:
    prefix = rng.choice(["4", "51", "52", "55", "6011"])
    digits = luhn_check_digit(prefix + "".join(rng.choice("0123456789")
                                               for _ in range(15 - len(prefix))))
    return "-".join(digits[i:i + 4] for i in range(0, 16, 4))


def phone(rng: random.Random) -> str:
    area, exchange = rng.randint(201, 989), rng.randint(200, 999)
    line = f"{rng.randint(0, 9999):04d}"
    return rng.choice([f"{area}-{exchange}-{line}", f"({area}) {exchange}-{line}"])


def name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


# --------------------------------------------------------------------------------- forms


def percent(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def percent_every(value: str) -> str:
    return "".join(f"%{b:02x}" for b in value.encode())


def html_decimal(value: str) -> str:
    return "".join(f"&#{ord(c)};" if not c.isalnum() or i % 2 else c
                   for i, c in enumerate(value))


def html_hex(value: str) -> str:
    return "".join(f"&#x{ord(c):X};" for c in value)


def html_named(value: str) -> str:
    names = {"@": "&commat;", ".": "&period;", "-": "&dash;", " ": "&nbsp;", "(": "&lpar;",
             ")": "&rpar;", "_": "&UnderBar;", "+": "&plus;"}
    return "".join(names.get(c, c) for c in value)


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def b64url(value: str) -> str:
    return base64.urlsafe_b64encode(f"id={value}".encode()).decode().rstrip("=")


def digits_in(zero: int) -> Callable[[str], str]:
    return lambda v: "".join(chr(zero + int(c)) if c.isdigit() else c for c in v)


def separator(sep: str) -> Callable[[str], str]:
    return lambda v: v.replace("-", sep)


def look_alike(table: dict[str, str]) -> Callable[[str], str]:
    return lambda v: "".join(table.get(c, c) if i % 2 == 0 else c for i, c in enumerate(v))


def fullwidth(value: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in value)


NUMBER_FORMS: dict[str, Callable[[str], str]] = {
    "plain": lambda v: v,
    "hyphen U+2010": separator("\u2010"), "non-breaking hyphen U+2011": separator("\u2011"),
    "en dash U+2013": separator("\u2013"), "minus U+2212": separator("\u2212"),
    "dots": separator("."), "slashes": separator("/"),
    **{f"{script} digits": digits_in(zero) for script, zero in SCRIPTS.items()},
    "percent-encoded": percent_every, "html decimal": html_decimal, "html hex": html_hex,
    "html named": html_named, "base64": b64, "base64 url-safe": b64url,
}
# forms that write something after the value, which is not part of it (the value must be found,
# the suffix may stay)
SUFFIXES = {"followed by --": "--", "followed by _": "_", "followed by -x": "-x"}
EMAIL_FORMS: dict[str, Callable[[str], str]] = {
    "plain": lambda v: v,
    **{form: (lambda v, s=suffix: v + s) for form, suffix in SUFFIXES.items()},
    "fullwidth": fullwidth, "zero-width space": lambda v: v.replace("@", "\u200b@"),
    "percent-encoded @": percent, "percent-encoded": percent_every,
    "html decimal": html_decimal, "html hex": html_hex, "html named": html_named,
    "base64": b64, "base64 url-safe": b64url,
}
NAME_FORMS: dict[str, Callable[[str], str]] = {
    "title case": lambda v: v, "all caps": str.upper, "lowercase": str.lower,
    "cyrillic look-alikes": look_alike(LOOK_ALIKE_CYRILLIC),
    "greek look-alikes": look_alike(LOOK_ALIKE_GREEK),
    "accents": lambda v: v.replace("e", "\u00e9").replace("a", "\u00e1"),
    "percent-encoded": percent, "html named": html_named, "html decimal": html_decimal,
    "base64": b64,
}
KINDS: dict[str, tuple[Callable[[random.Random], str], dict[str, Callable[[str], str]]]] = {
    "email": (email, EMAIL_FORMS), "ssn": (ssn, NUMBER_FORMS), "card": (card, NUMBER_FORMS),
    "phone": (phone, NUMBER_FORMS), "name": (name, NAME_FORMS),
}


def sentence(rng: random.Random, written: str) -> tuple[str, int, int]:
    template = rng.choice(TEMPLATES)
    head, tail = template.split("{v}")
    head, tail = head.replace("{{", "{").replace("}}", "}"), \
        tail.replace("{{", "{").replace("}}", "}")
    return head + written + tail, len(head), len(head) + len(written)


def covered(text: str, start: int, end: int, profile: Profile) -> bool:
    result = redact_text(text, profile)
    spans = [(e.start, e.end) for e in result.entities]
    return all(any(s <= i < e for s, e in spans) for i in range(start, end))


def recall(rng: random.Random, profile: Profile) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind, (make, forms) in KINDS.items():
        out[kind] = {}
        for form, write in forms.items():
            hits = 0
            for _ in range(PER_FORM):
                text, start, end = sentence(rng, write(make(rng)))
                hits += covered(text, start, end - len(SUFFIXES.get(form, "")), profile)
            out[kind][form] = round(hits / PER_FORM, 3)
        log(f"{kind}: lowest recall {min(out[kind].values())}")
    out["name"]["not in the name lists"] = round(sum(
        covered(*sentence(rng, " ".join(rng.choice(UNLISTED))), profile)
        for _ in range(PER_FORM)) / PER_FORM, 3)
    return out


def clean_changed(rng: random.Random, profile: Profile) -> dict[str, Any]:
    per_kind: dict[str, float] = {}
    changed_examples: list[str] = []
    total = changed = 0
    for kind, sentences in CLEAN.items():
        hits = 0
        for _ in range(CLEAN_PER_KIND):
            text = rng.choice(sentences)
            result = redact_text(text, profile)
            if result.entities:
                hits += 1
                if text not in changed_examples:
                    changed_examples.append(text)
        per_kind[kind] = round(hits / CLEAN_PER_KIND, 3)
        total += CLEAN_PER_KIND
        changed += hits
    return {"share_changed": round(changed / total, 3), "per_kind": per_kind,
            "distinct_sentences": sum(len(s) for s in CLEAN.values()),
            "changed_sentences": changed_examples}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timing(rng: random.Random, profile: Profile) -> dict[str, Any]:
    sentences = []
    for _ in range(600):
        kind = rng.choice(list(KINDS))
        make, forms = KINDS[kind]
        if rng.random() < 0.5:
            sentences.append(rng.choice([s for group in CLEAN.values() for s in group]))
        else:
            sentences.append(sentence(rng, rng.choice(list(forms.values()))(make(rng)))[0])
    prompts = []
    for _ in range(PROMPTS):
        parts: list[str] = []
        while sum(len(p.encode()) + 1 for p in parts) < PROMPT_BYTES:
            parts.append(rng.choice(sentences))
        prompts.append(" ".join(parts).encode()[:PROMPT_BYTES].decode("utf-8", "ignore"))
    out: dict[str, Any] = {}
    for label, texts in (("sentence", sentences), ("prompt_2kb", prompts)):
        for text in texts:  # warm-up
            redact_text(text, profile)
        samples = []
        for _ in range(3):
            for text in texts:
                started = time.process_time()
                redact_text(text, profile)
                samples.append((time.process_time() - started) * 1000)
        out[label] = {"mean_cpu_ms": round(statistics.mean(samples), 3),
                      "p50_cpu_ms": round(statistics.median(samples), 3),
                      "p95_cpu_ms": round(percentile(samples, 0.95), 3),
                      "p99_cpu_ms": round(percentile(samples, 0.99), 3)}
    return out


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def main() -> int:
    profile = Profile.named("standard")
    rng = random.Random(SEED)  # noqa: S311 - a reproducible corpus, not a secret
    per_form = recall(rng, profile)
    flat = [r for forms in per_form.values() for r in forms.values()]
    clean = clean_changed(rng, profile)
    log(f"clean sentences changed: {clean['share_changed']}")
    times = timing(rng, profile)
    log(f"2 KB prompt p95 {times['prompt_2kb']['p95_cpu_ms']} ms of CPU")
    report = {
        "benchmark": "redaction_quality",
        "profile": profile.name,
        "seed": SEED,
        "sentences_per_form": PER_FORM,
        "recall_per_form": per_form,
        "recall_lowest": min(flat),
        "recall_mean": round(sum(flat) / len(flat), 3),
        "clean": clean,
        "time": times,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
