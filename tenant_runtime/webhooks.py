"""Outgoing webhooks, shared by every tenant area that sends them (audit checkpoints, approval
notifications, approved actions): the URL rule, the HMAC-SHA256 signature and the POST.

- A URL must be ``https://``; plain ``http://`` is accepted only for this machine
  (development and tests).
- The body is signed as ``X-Magistrate-Signature: sha256=<hex HMAC-SHA256(secret, body)>``.
- ``poster(policy)`` is the real sender: it POSTs through ``tenant_runtime.outbound`` under the
  operator's egress policy (the same as the gateway's routes: no private or loopback address
  unless its network is listed, checked at connect time; a redirect is never followed). It
  answers the HTTP status; a connection failure raises ``httpx2.TransportError`` and a refusal
  ``EgressRefused``, which ``send_signed`` turns into a short reason.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import httpx2

from tenant_runtime import outbound
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.gateway.egress import EgressPolicy, EgressRefused

SIGNATURE_HEADER = "X-Magistrate-Signature"
TIMEOUT_SECONDS = 5

# (url, body, headers) -> HTTP status; the real one is ``poster(policy)``
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


def poster(policy: EgressPolicy) -> Poster:
    """The real ``Poster``: a JSON POST under ``policy`` (connect-time check, no redirects)."""

    def post_json(url: str, body: bytes, headers: dict[str, str]) -> int:
        with outbound.http_client(policy, timeout=TIMEOUT_SECONDS) as client:
            response = client.post(url, content=body, headers={
                "Content-Type": "application/json", **headers})
            return response.status_code

    return post_json


def send_signed(post: Poster, url: str, secret: str, body: bytes,
                headers: dict[str, str] | None = None) -> str | None:
    """POST ``body`` signed with ``secret``; None when the receiver answered 2xx, else a short
    reason (an HTTP status, the egress policy's sentence, or the error's type, never its
    message: it may carry a host)."""
    try:
        status = post(url, body, {SIGNATURE_HEADER: signature(secret, body), **(headers or {})})
    except EgressRefused as exc:
        return exc.message
    except (OSError, ValueError, httpx2.HTTPError) as exc:
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
