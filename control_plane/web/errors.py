"""Error responses: an HTML page for browsers, JSON for ``/api/`` and ``/v1/``; both carry the
request id and one clear sentence, never a stack trace."""

from __future__ import annotations

import logging
from urllib.parse import quote

import psycopg
import sqlalchemy.exc
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from control_plane.exceptions import (
    MagistrateError,
    NotSignedIn,
    PasswordChangeRequired,
    RateLimited,
)
from control_plane.web.templating import is_htmx, render
from tenant_runtime.exceptions import TenantError, TenantKeyUnavailable

log = logging.getLogger("magistrate.http")

# What a database outage raises: the server is down, restarting or refusing connections
# (OperationalError), a pooled connection died under a statement (InterfaceError, or any error
# SQLAlchemy recognised as a disconnect), or no connection came free in time (TimeoutError).
DATABASE_UNAVAILABLE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                        sqlalchemy.exc.TimeoutError, psycopg.OperationalError,
                        psycopg.InterfaceError)
DATABASE_RETRY_AFTER_SECONDS = 2
DATABASE_UNAVAILABLE_MESSAGE = ("A database Magistrate depends on is unavailable right now; "
                                "try again in a few seconds.")

HTTP_MESSAGES = {
    400: "The request could not be understood.",
    404: "There is nothing here. Check the address.",
    405: "That method is not allowed on this address.",
    413: "The request body is too large.",
    415: "That content type is not supported here.",
    503: "A service Magistrate depends on is unavailable. Try again shortly.",
}
TITLES = {400: "Bad request", 401: "Sign in", 403: "Not allowed", 404: "Not found",
          405: "Method not allowed", 409: "Conflict", 410: "Gone", 413: "Too large",
          415: "Unsupported",
          422: "Invalid input", 429: "Too many requests", 500: "Server error",
          503: "Unavailable"}


def wants_json(request: Request) -> bool:
    path = request.url.path
    return path.startswith(("/api/", "/v1/")) or (
        "application/json" in request.headers.get("accept", "")
        and "text/html" not in request.headers.get("accept", ""))


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says a database cannot be reached (a 503 to retry), not a bug."""
    if isinstance(exc, DATABASE_UNAVAILABLE):
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated


def error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, NotSignedIn) and not wants_json(request):
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = "/sign-in?next=" + quote(wanted, safe="/")
        if is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)
    if isinstance(exc, PasswordChangeRequired) and not wants_json(request):
        if is_htmx(request):
            return Response(status_code=403, headers={"HX-Redirect": "/account"})
        return RedirectResponse("/account", status_code=303)
    if isinstance(exc, MagistrateError | TenantError):
        status, message = exc.status_code, exc.message
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        message = HTTP_MESSAGES.get(status, "The request could not be handled.")
    elif database_unavailable(exc):
        status, message = 503, DATABASE_UNAVAILABLE_MESSAGE
    else:
        status, message = 500, ("Something went wrong on our side. It has been logged; quote "
                                "the request id if you contact support.")
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    if status == 503 and database_unavailable(exc):
        headers["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    request_id = getattr(request.state, "request_id", "")
    if wants_json(request):
        return JSONResponse({"error": message, "status": status, "request_id": request_id},
                            status_code=status, headers=headers)
    return render(request, "errors/error.html",
                  {"status": status, "title": TITLES.get(status, "Error"), "message": message},
                  status_code=status, partial="errors/_error.html", headers=headers)


async def handle_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, TenantKeyUnavailable):  # the customer's KMS: the operator should know
        log.warning("request refused: %s", exc.message,
                    extra={"request_id": getattr(request.state, "request_id", "")})
    return error_response(request, exc)


async def handle_database_unavailable(request: Request, exc: Exception) -> Response:
    """A database outage is the operator's to fix, not a bug: one warning line, no trace, and
    a 503 with Retry-After that the caller may retry."""
    log.warning("request failed: a database is unavailable (%s)", type(exc).__name__,
                extra={"request_id": getattr(request.state, "request_id", "")})
    return error_response(request, exc)
