"""Magistrate's authorization server under uvicorn, a member's browser at its consent page, and
the official SDK's OAuth client (``OAuthClientProvider``) connecting with it."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
from mcp import ClientSession
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from tests.factories import DEFAULT_PASSWORD, csrf_from

REDIRECT_URI = "http://127.0.0.1:9/callback"
HIDDEN_RE = re.compile(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">')


class Browser:
    """A member signed in at the live server (a real session cookie), answering consent
    pages as a person would: read the page, pick the agent, press a button."""

    def __init__(self, base: str, email: str, password: str = DEFAULT_PASSWORD) -> None:
        self.base = base
        self.http = httpx2.Client(base_url=base, follow_redirects=False, timeout=30)
        token = csrf_from(self.http.get("/sign-in").text)
        answer = self.http.post("/sign-in", data={"csrf_token": token, "email": email,
                                                  "password": password})
        assert answer.status_code == 303, answer.text

    def page(self, url: str) -> httpx2.Response:
        return self.http.get(url)

    def consent(self, url: str, *, decision: str = "approve", agent: str | None = None
                ) -> httpx2.Response:
        page = self.page(url)
        assert page.status_code == 200, page.text
        fields = {name: html.unescape(value) for name, value in HIDDEN_RE.findall(page.text)}
        fields["decision"] = decision
        if agent is not None:
            fields["agent"] = agent
        return self.http.post("/oauth/authorize", data=fields)

    def close(self) -> None:
        self.http.close()


def code_of(answer: httpx2.Response) -> dict[str, str]:
    """The parameters the consent sent to the redirect URI."""
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT_URI)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@dataclass
class MemoryStorage:
    tokens: OAuthToken | None = None
    client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


@dataclass
class SdkClient:
    """The SDK's OAuth provider; its redirect goes to ``browser``'s consent page."""

    browser: Browser
    agent: str | None = None
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    authorization_urls: list[str] = field(default_factory=list)
    providers: dict[str, OAuthClientProvider] = field(default_factory=dict)

    def provider(self, url: str) -> OAuthClientProvider:
        """One provider per endpoint, as a long-running client keeps it (with the token's
        expiry time it computed when the token came)."""
        if url not in self.providers:
            self.providers[url] = self._new_provider(url)
        return self.providers[url]

    def _new_provider(self, url: str) -> OAuthClientProvider:
        async def redirect(authorization_url: str) -> None:
            self.authorization_urls.append(authorization_url)

        async def callback() -> AuthorizationCodeResult:
            params = code_of(self.browser.consent(self.authorization_urls[-1],
                                                  agent=self.agent))
            return AuthorizationCodeResult(code=params["code"], state=params.get("state"))

        metadata = OAuthClientMetadata(client_name="Desk client", redirect_uris=[REDIRECT_URI],
                                       token_endpoint_auth_method="none")
        return OAuthClientProvider(url, metadata, self.storage, redirect_handler=redirect,
                                   callback_handler=callback)

    @asynccontextmanager
    async def session(self, url: str) -> AsyncIterator[ClientSession]:
        async with httpx2.AsyncClient(auth=self.provider(url), timeout=30) as http, \
                streamable_http_client(url, http_client=http) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            yield session


# -- the flow by hand, for the refusals -----------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.decode().rstrip("=")


def register(base: str, **metadata: Any) -> httpx2.Response:
    body = {"client_name": "Hand client", "redirect_uris": [REDIRECT_URI], **metadata}
    return httpx2.post(f"{base}/oauth/register", json=body, timeout=30)


def authorize_url(base: str, client_id: str, challenge: str, resource: str,
                  **overrides: str) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI,
              "state": "st-1", "code_challenge": challenge, "code_challenge_method": "S256",
              "resource": resource, "scope": "mcp", **overrides}
    return f"{base}/oauth/authorize?{urlencode({k: v for k, v in params.items() if v != ''})}"


def token(base: str, **form: str) -> httpx2.Response:
    return httpx2.post(f"{base}/oauth/token", data=form, timeout=30)


@dataclass
class HandFlow:
    """A registered client that went through consent by hand: its code and verifier."""

    client_id: str
    code: str
    verifier: str
    resource: str

    def exchange(self, base: str, **overrides: str) -> httpx2.Response:
        form = {"grant_type": "authorization_code", "code": self.code,
                "redirect_uri": REDIRECT_URI, "client_id": self.client_id,
                "code_verifier": self.verifier, "resource": self.resource, **overrides}
        return token(base, **{k: v for k, v in form.items() if v is not None})


def hand_flow(base: str, browser: Browser, resource: str) -> HandFlow:
    client_id = register(base).json()["client_id"]
    verifier, challenge = pkce()
    params = code_of(browser.consent(authorize_url(base, client_id, challenge, resource)))
    assert params["state"] == "st-1"
    return HandFlow(client_id, params["code"], verifier, resource)


def tokens_of(base: str, browser: Browser, resource: str) -> tuple[HandFlow, dict[str, Any]]:
    flow = hand_flow(base, browser, resource)
    answer = flow.exchange(base)
    assert answer.status_code == 200, answer.text
    return flow, answer.json()
