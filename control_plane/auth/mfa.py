"""TOTP multi-factor authentication (pyotp), QR codes rendered server-side (segno), and
one-time backup codes stored as SHA-256 digests."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import pyotp
import segno

ISSUER = "Magistrate"
BACKUP_CODE_COUNT = 10


def new_totp_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """An inline SVG (no script, no external reference) for the enrollment page."""
    return segno.make(uri, error="m").svg_inline(scale=5, dark="#111", light="#fff")


STEP_SECONDS = 30


def matching_step(secret: str, code: str, *, last_used_step: int | None = None,
                  now: float | None = None) -> int | None:
    """The time step whose code equals ``code`` (one step of drift either way, as
    authenticator apps expect), or None. A step at or before ``last_used_step`` is refused, so
    a code is accepted at most once (RFC 6238, section 5.2)."""
    cleaned = "".join(ch for ch in code if ch.isdigit())
    if len(cleaned) != 6:
        return None
    totp = pyotp.TOTP(secret, interval=STEP_SECONDS)
    current = int((time.time() if now is None else now) // STEP_SECONDS)
    for step in (current - 1, current, current + 1):
        if last_used_step is not None and step <= last_used_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), cleaned):
            return step
    return None


def new_backup_codes() -> list[str]:
    return [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(BACKUP_CODE_COUNT)]


def backup_code_hash(code: str) -> str:
    normalized = code.strip().lower().replace(" ", "")
    return hashlib.sha256(normalized.encode()).hexdigest()
