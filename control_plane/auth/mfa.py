"""TOTP multi-factor authentication (pyotp), QR codes rendered server-side (segno), and
one-time backup codes stored as SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets

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


def verify_totp(secret: str, code: str) -> bool:
    cleaned = "".join(ch for ch in code if ch.isdigit())
    if len(cleaned) != 6:
        return False
    # one step of drift either way, as authenticator apps expect
    return pyotp.TOTP(secret).verify(cleaned, valid_window=1)


def new_backup_codes() -> list[str]:
    return [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(BACKUP_CODE_COUNT)]


def backup_code_hash(code: str) -> str:
    normalized = code.strip().lower().replace(" ", "")
    return hashlib.sha256(normalized.encode()).hexdigest()
