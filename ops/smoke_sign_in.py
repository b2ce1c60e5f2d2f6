"""Smoke check of a running Magistrate: readiness, then sign-in over HTTP with a password.

    python ops/smoke_sign_in.py http://127.0.0.1:8000 owner@magistrate.local 'PASSWORD'

Exits 0 when /readyz answers 200 and the sign-in form accepts the credentials (303)."""

from __future__ import annotations

import http.cookiejar
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def main(base: str, email: str, password: str) -> int:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as resp:  # noqa: S310
                if resp.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            print(f"smoke: {base}/readyz never answered 200", file=sys.stderr)
            return 1
        time.sleep(0.5)
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect)
    page = opener.open(f"{base}/sign-in", timeout=10).read().decode()
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    if not match:
        print("smoke: the sign-in page has no CSRF token", file=sys.stderr)
        return 1
    form = urllib.parse.urlencode({"csrf_token": match.group(1), "email": email,
                                   "password": password}).encode()
    try:
        opener.open(f"{base}/sign-in", data=form, timeout=10)
        status = 200
    except urllib.error.HTTPError as exc:
        status = exc.code
        location = exc.headers.get("location")
    if status != 303:
        print(f"smoke: sign-in answered {status}, expected 303", file=sys.stderr)
        return 1
    print(f"smoke: signed in as {email} (redirected to {location})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
