"""Outgoing webhooks, shared by every tenant area that sends them (audit checkpoints, approval
notifications, approved actions): the URL rule, the HMAC-SHA256 signature and the POST.

- A URL must be ``https://``; plain ``http://`` is accepted only for this machine
  (development and tests).
- The body is signed as ``X-Magistrate-Signature: sha256=<hex HMAC-SHA256(secret, body)>``.
- ``post_json`` answers the HTTP status; a connection failure raises ``OSError``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput

SIGNATURE_HEADER = "X-Magistrate-Signature"
TIMEOUT_SECONDS = 5

# (url, body, headers) -> HTTP status; the real one is ``post_json``
Poster = Callable[[str, bytes, dict[str, str]], int]


def check_webhook_url(url: str) -> str:
    """https anywhere; plain http only to this machine (development and tests)."""
    url = url.strip()
    parts = urlsplit(url)
    if len(url) <= 500 and parts.scheme == "https" and parts.hostname:
        return url
    if len(url) <= 500 and parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return url
    raise TenantInvalidInput("The webhook URL must start with https:// (plain http is accepted "
                             "only for this machine).")


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_json(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST",  # noqa: S310 - checked
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def send_signed(post: Poster, url: str, secret: str, body: bytes,
                headers: dict[str, str] | None = None) -> str | None:
    """POST ``body`` signed with ``secret``; None when the receiver answered 2xx, else a short
    reason (an HTTP status or the error's type, never its message: it may carry a host)."""
    try:
        status = post(url, body, {SIGNATURE_HEADER: signature(secret, body), **(headers or {})})
    except (OSError, ValueError) as exc:
        return type(exc).__name__
    return None if 200 <= status < 300 else f"HTTP {status}"


class WebhookSettings(Protocol):
    webhook_url: str | None
    webhook_secret_sealed: bytes | None


def set_webhook(ctx: TenantContext, row: WebhookSettings, url: str | None, *,
                table: str) -> tuple[list[str], str | None]:
    """Point a settings row's webhook at ``url`` (checked; None turns it off). A new URL gets
    a new secret, sealed (row key 1): returns the changed field names and the new secret, to
    show once."""
    url = check_webhook_url(url) if url and url.strip() else None
    if url == row.webhook_url:
        return [], None
    row.webhook_url = url
    if url is None:
        row.webhook_secret_sealed = None
        return ["webhook_url"], None
    secret = secrets.token_urlsafe(32)
    row.webhook_secret_sealed = ctx.sealer.seal(secret, table=table,
                                                column="webhook_secret_sealed", row_key=1)
    return ["webhook_url", "webhook_secret"], secret
