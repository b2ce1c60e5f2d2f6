"""The whole sign-in story in a real browser: password sign-in, MFA enrollment, sign-out that
really revokes the session (a replayed cookie is refused), and sign-in with the MFA challenge."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect

from tests.factories import DEFAULT_PASSWORD, make_user, next_code

# the Chromium check runs first, before any database or server is started
pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("chromium_path")]

SESSION_COOKIE = "magistrate_session"
TIMEOUT_MS = 10_000


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        return None


def raw_get(url: str, cookie: str) -> tuple[int, str | None]:
    """GET without following redirects: (status, Location)."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, headers={"Cookie": cookie})  # noqa: S310 - loopback
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, response.headers.get("location")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("location")


def session_cookie(context: BrowserContext) -> str | None:
    for cookie in context.cookies():
        if cookie["name"] == SESSION_COOKIE:
            return cookie["value"]
    return None


def record_console(problems: list[str], msg: ConsoleMessage) -> None:
    """Console errors and warnings; the app serves no favicon, so the browser's own request for
    /favicon.ico (a 404 on every page) is not counted."""
    if msg.type not in ("error", "warning"):
        return
    if msg.location.get("url", "").endswith("/favicon.ico"):
        return
    problems.append(f"console {msg.type}: {msg.text} ({msg.location.get('url')})")


def sign_in(page: Page, base: str, email: str) -> None:
    page.goto(f"{base}/sign-in")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_sign_in_mfa_sign_out_and_replay(live_server: str, browser: Browser, db,
                                         artifacts_dir: Path) -> None:
    base = live_server
    user = make_user(db)

    context = browser.new_context(base_url=base)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: record_console(problems, msg))
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    # 1-2. password sign-in lands on the dashboard
    sign_in(page, base, user.email)
    page.wait_for_url(f"{base}/")
    expect(page.get_by_test_id("welcome")).to_have_text(f"Signed in as {user.email}.")

    # 3. MFA enrollment from the account page
    page.goto(f"{base}/account")
    expect(page.get_by_test_id("mfa-status")).to_contain_text("Off.")
    page.get_by_role("button", name="Set up MFA").click()
    page.wait_for_url(f"{base}/account/mfa")
    secret = page.get_by_test_id("totp-secret").inner_text().strip()
    assert re.fullmatch(r"[A-Z2-7]{16,}", secret), secret
    page.get_by_label("Code").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on MFA").click()
    codes = page.get_by_test_id("backup-codes").locator("li")
    expect(codes).to_have_count(10)
    assert len(set(codes.all_inner_texts())) == 10
    page.get_by_role("link", name="Back to your account").click()
    page.wait_for_url(f"{base}/account")
    expect(page.get_by_test_id("mfa-status")).to_contain_text("On since")

    # 4. sign out; the browser forgets the session cookie
    old_cookie = session_cookie(context)
    assert old_cookie, "no session cookie after signing in"
    page.get_by_test_id("sign-out").click()
    page.wait_for_url(f"{base}/sign-in")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert session_cookie(context) is None

    # 5. the old cookie, replayed, is refused: the server revoked the session
    status, location = raw_get(f"{base}/", f"{SESSION_COOKIE}={old_cookie}")
    assert (status, location) == (303, "/sign-in?next=/")
    replay = browser.new_context(base_url=base)
    replay.add_cookies([{"name": SESSION_COOKIE, "value": old_cookie, "url": base}])
    replay_page = replay.new_page()
    replay_page.goto(f"{base}/")
    replay_page.wait_for_url(re.compile(re.escape(f"{base}/sign-in") + r"(\?.*)?$"))
    expect(replay_page.get_by_test_id("welcome")).to_have_count(0)
    replay.close()

    # 6. signing in again asks for the TOTP code, then reaches the dashboard
    sign_in(page, base, user.email)
    page.wait_for_url(re.compile(re.escape(f"{base}/sign-in/mfa") + r"(\?.*)?$"))
    expect(page.get_by_role("heading", name="Verification code")).to_be_visible()
    page.get_by_label("Code").fill(next_code(secret))
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url(f"{base}/")
    expect(page.get_by_test_id("welcome")).to_have_text(f"Signed in as {user.email}.")
    new_cookie = session_cookie(context)
    assert new_cookie and new_cookie != old_cookie

    page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)
    context.close()
    # no CSP violation, failed asset or script error on any page of the flow
    assert problems == []
