"""Every destructive action asks first. The routes are enumerated from the app itself, so a
new ``…/delete`` or ``…/revoke`` route without a confirming form in the templates fails here;
and every form in the templates that posts to one carries ``data-confirm`` (and, for the
irreversible ones, ``data-confirm-phrase``: the person types the name)."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.routing import Route

TEMPLATES = Path(__file__).resolve().parents[3] / "templates"

# the last path segment of a state change that takes something away
DESTRUCTIVE = {"delete", "remove", "revoke", "suspend", "deactivate", "disable", "demote",
               "withdraw", "unassign", "disallow", "sign-out-everywhere", "erase", "purge",
               "replace"}
# ... and those of them that cannot be undone: typed confirmation (normalized paths below)
IRREVERSIBLE = {"tenants/delete", "tenants/api-keys/revoke", "tenants/credentials/delete",
                "tenants/gateway/routes/delete", "tenants/signals/sources/delete",
                "tenants/backups/replace"}
# prices/{provider_model:path}/delete ends in a path parameter the template fills from a filter
TAG = re.compile(r"<form\b[^>]*>", re.S)
ACTION = re.compile(r'\b(?:action|hx-post)="([^"]*)"')
CONDITIONAL = re.compile(r"\{\{\s*'([^']+)'\s+if\s+[^}]*?else\s+'([^']+)'\s*\}\}")


def normalize(path: str) -> str:
    """A path's literal segments: ``/tenants/{id:int}/api-keys/{k}/revoke`` and
    ``/tenants/{{ tenant.id }}/api-keys/{{ k.id }}/revoke`` both give
    ``tenants/api-keys/revoke``."""
    path = re.sub(r"\{\{.*?\}\}", "", path)
    path = re.sub(r"\{[^}]*\}", "", path)
    return "/".join(part for part in path.split("/") if part)


def alternatives(action: str) -> list[str]:
    """Both branches of ``{{ 'withdraw' if granted else 'grant' }}``."""
    found = CONDITIONAL.search(action)
    if not found:
        return [action]
    return [action[:found.start()] + choice + action[found.end():] for choice in found.groups()]


def destructive_routes(app) -> set[str]:
    found = set()
    for route in app.routes:
        if isinstance(route, Route) and "POST" in (route.methods or set()):
            last = route.path.rstrip("/").rsplit("/", 1)[-1]
            if last in DESTRUCTIVE and not route.path.startswith("/api/"):
                found.add(normalize(route.path))
    return found


def template_forms() -> list[tuple[Path, str, str]]:
    """(file, normalized action, opening tag) of every form in the templates."""
    forms = []
    for path in TEMPLATES.rglob("*.html"):
        for tag in TAG.findall(path.read_text()):
            action = ACTION.search(tag)
            if action:
                for one in alternatives(action.group(1)):
                    forms.append((path, normalize(one), tag))
    return forms


def matches(route: str, action: str) -> bool:
    """A template action names the route when its literal segments end the route's (an
    action such as ``{{ base }}/demote`` holds only the last ones)."""
    return bool(action) and (route == action or route.endswith("/" + action))


def test_the_enumeration_sees_the_known_destructive_routes(client):
    routes = destructive_routes(client.app)
    for known in ("tenants/delete", "tenants/api-keys/revoke", "tenants/members/remove",
                  "users/deactivate", "tenants/credentials/delete"):
        assert known in routes


def test_every_destructive_route_has_a_confirming_form(client):
    forms = template_forms()
    missing = []
    for route in sorted(destructive_routes(client.app)):
        confirming = [tag for _, action, tag in forms
                      if matches(route, action) and "data-confirm=" in tag]
        if not confirming:
            missing.append(route)
    assert missing == [], f"destructive routes without a confirming form: {missing}"


def test_every_form_to_a_destructive_route_confirms(client):
    routes = destructive_routes(client.app)
    problems = []
    for path, action, tag in template_forms():
        for route in routes:
            if not matches(route, action) or action.rsplit("/", 1)[-1] not in DESTRUCTIVE:
                continue
            if "data-confirm=" not in tag:
                problems.append(f"{path.name}: {action} has no data-confirm")
            if route in IRREVERSIBLE and "data-confirm-phrase=" not in tag:
                problems.append(f"{path.name}: {action} is irreversible but asks no phrase")
    assert problems == []


def test_the_dialog_and_script_are_on_every_page(client):
    page = client.get("/sign-in").text
    assert 'id="confirm-dialog"' in page and 'src="/static/console.js"' in page
    assert 'id="toasts"' in page
    script = client.get("/static/console.js")
    assert script.status_code == 200 and "htmx:responseError" in script.text
