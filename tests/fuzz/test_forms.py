"""Every form in the route table, posted hostile text: a NUL, an unpaired surrogate (as the bytes
``ED A0 80``, which are not UTF-8, both raw and percent-encoded), other bytes that are not
UTF-8, a 100,000-character value and control characters, each in one field at a time (the
others filled with plausible values, so the hostile one gets as far as it can), urlencoded
and as multipart, and in a field's *name* too; signed in as an Owner of an active tenant, with
a valid CSRF token in the body (so the edge's own form parser reads them first). No answer
may be a server error or carry a trace, and a NUL or a control character is never accepted.

The routes come from the app's router (the tenant areas mounted under ``/tenants/{id}``
included), so a form added later is fuzzed without anyone listing it here. A form's fields
are its pydantic model's and those the rendered pages put in a ``<form>`` posting to it,
whose default values are the plausible ones."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Literal, get_args, get_origin
from urllib.parse import quote_plus, urlsplit

import pytest
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from tests.fuzz.conftest import ApiEnv

JSON_PREFIXES = ("/api/", "/v1/")
# value name → the bytes put in the body for it
HOSTILE: dict[str, bytes] = {
    "nul": b"a\x00b",
    "surrogate": "x\ud800y".encode("utf-8", "surrogatepass"),  # ED A0 80: not UTF-8
    "not-utf8": b"\xff\xfe\xc3(",
    "overlong": b"o" * 100_000,
    "controls": b"\x01\x07\x08\x1b[31mred\x7f",
    "c1-control": "next\u0085line".encode(),
}
REFUSED = {"nul", "controls", "c1-control"}  # never accepted, whatever the route
# routes that end the session or stop the tenant: fuzzed last, in this order
LAST = ["/tenants/{tenant_id:int}/suspend", "/tenants/{tenant_id:int}/resume",
        "/tenants/{tenant_id:int}/delete", "/account/sign-out-everywhere", "/sign-out"]
TRACE = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\.py\", line \d+")


@dataclass
class FormRoute:
    path: str  # the route's pattern
    url: str  # with the fixture's ids in it
    fields: dict[str, str] = field(default_factory=dict)  # name → a plausible value


# ------------------------------------------------------------------------------ the router


def post_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for route in routes:
        if isinstance(route, Route) and "POST" in (route.methods or set()):
            yield prefix + route.path, route
        elif isinstance(route, Mount):
            yield from post_routes(list(route.routes or []), prefix + route.path)


def get_routes(routes: list[Any], prefix: str = "") -> Iterator[str]:
    for route in routes:
        if isinstance(route, Route) and "GET" in (route.methods or set()):
            yield prefix + route.path
        elif isinstance(route, Mount) and not route.path.startswith("/static"):
            yield from get_routes(list(route.routes or []), prefix + route.path)


def concrete(path: str, api_env: ApiEnv) -> str:
    ids = {"tenant_id": api_env.tenant_id, "agent_id": api_env.agent_id,
           "request_id": api_env.request_id, "user_id": api_env.owner_id + 1,
           "provider_model": "gpt-4o-mini"}
    return re.sub(r"\{(\w+)(?::\w+)?\}",
                  lambda found: str(ids.get(found.group(1), 1)), path)


class Forms(HTMLParser):
    """The POST forms of a page: action → {field name: default value}."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self._current: dict[str, str] | None = None
        self._textarea: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("method", "get").lower() == "post":
            self._current = {}
            self.found.append((a.get("action", ""), self._current))
        elif self._current is None or not a.get("name"):
            return
        elif tag == "input" and a.get("type") not in ("submit", "button", "file"):
            if a.get("type") in ("checkbox", "radio") and "checked" not in a:
                # a person may tick it: the first box's value is a plausible answer
                self._current.setdefault(a["name"], a.get("value", ""))
            else:
                self._current[a["name"]] = a.get("value", "")
        elif tag == "textarea":
            self._textarea = a["name"]
            self._current[a["name"]] = ""
        elif tag == "select":
            self._select = a["name"]
            self._current.setdefault(a["name"], "")
        elif tag == "option" and self._select and (
                "selected" in a or not self._current.get(self._select)):
            self._current[self._select] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None
        elif tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._current is not None and self._textarea:
            self._current[self._textarea] += data


def plausible(name: str, annotation: Any) -> str:
    """A value a person could have typed into ``name``, when no page offers a default."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    kinds = {get_origin(annotation), annotation, *args}
    if Literal in kinds or get_origin(args[0] if args else None) is Literal:
        literal = annotation if get_origin(annotation) is Literal else args[0]
        return str(get_args(literal)[0])
    if bool in kinds:
        return "true"
    if int in kinds or float in kinds:
        return "1"
    if "email" in name:
        return "fuzz@example.com"
    if "url" in name:
        return "https://example.com/hook"
    return "fuzz"


def discover(client: TestClient, app: Any, api_env: ApiEnv) -> list[FormRoute]:
    pages: list[tuple[str, dict[str, str]]] = []
    for path in sorted(set(get_routes(app.routes))):
        if path.startswith(JSON_PREFIXES) or path in ("/openapi.json",):
            continue
        answer = client.get(concrete(path, api_env), follow_redirects=False)
        if answer.status_code == 200 and "text/html" in answer.headers.get("content-type", ""):
            parser = Forms()
            parser.feed(answer.text)
            pages.extend(parser.found)
    found: list[FormRoute] = []
    for path, route in post_routes(app.routes):
        if path.startswith(JSON_PREFIXES):
            continue
        form = FormRoute(path, concrete(path, api_env))
        for action, fields in pages:  # the page's defaults, where a page posts to it
            target = urlsplit(action).path
            if route.path_regex.match(target) and target.split("/")[:3] == \
                    form.url.split("/")[:3]:
                form.fields.update({k: v for k, v in fields.items() if k != "csrf_token"})
                break
        model = getattr(route.endpoint, "form_model", None)
        for name, info in (model.model_fields.items() if model is not None else ()):
            if name != "csrf_token" and not form.fields.get(name):
                form.fields[name] = plausible(name, info.annotation)
        if model is None:  # a form without a model: a generic field
            form.fields.setdefault("name", "fuzz")
        found.append(form)
    found.sort(key=lambda f: LAST.index(f.path) if f.path in LAST else -1)
    return found


# ------------------------------------------------------------------------------ the bodies


def urlencoded(fields: dict[str, bytes], *, raw: bool) -> bytes:
    def enc(value: bytes) -> bytes:
        return value if raw else quote_plus(value).encode()

    return b"&".join(enc(k) + b"=" + enc(v) for k, v in fields.items())


def multipart(fields: dict[str, bytes], boundary: str = "fuzzboundary") -> bytes:
    parts = [b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="'
             + k.replace(b'"', b"") + b'"\r\n\r\n' + v + b"\r\n" for k, v in fields.items()]
    return b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"


@pytest.fixture(scope="module")
def browser(api_env: ApiEnv) -> Iterator[TestClient]:
    client = TestClient(api_env.app, base_url="http://testserver",
                        raise_server_exceptions=False)
    client.cookies.set(*api_env.session_cookie)
    yield client
    client.close()


FIGURES: dict[str, Any] = {}


def test_the_fuzzer_reaches_past_the_form_check_with_plausible_values(
        api_env: ApiEnv, browser: TestClient) -> None:
    """The plausible values are accepted where nothing hostile is added, so a hostile value
    in one field is judged on its own, not refused for its neighbours."""
    forms = {f.path: f for f in discover(browser, api_env.app, api_env)}
    form = forms["/tenants/{tenant_id:int}/api-keys"]
    fields = {b"csrf_token": api_env.csrf_token.encode(),
              **{k.encode(): v.encode() for k, v in form.fields.items()}}
    answer = browser.post(form.url, content=urlencoded(fields, raw=False),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 201, answer.text


def test_every_form_route_refuses_hostile_text_without_a_server_error(
        api_env: ApiEnv, browser: TestClient) -> None:
    started = time.monotonic()
    forms = discover(browser, api_env.app, api_env)
    token = api_env.csrf_token.encode()
    failures: list[str] = []
    statuses: dict[int, int] = {}
    sent = 0

    def post(form: FormRoute, body: bytes, content_type: str, what: str,
             refused: bool) -> None:
        nonlocal sent
        answer = browser.post(form.url, content=body, follow_redirects=False,
                              headers={"Content-Type": content_type})
        sent += 1
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        if answer.status_code >= 500:
            failures.append(f"{answer.status_code} POST {form.path} {what}: "
                            f"{answer.text[-300:]}")
        elif TRACE.search(answer.text):
            failures.append(f"trace in POST {form.path} {what}")
        elif refused and answer.status_code < 400:
            failures.append(f"{answer.status_code}: POST {form.path} {what} was accepted")

    for form in forms:
        base = {k.encode(): v.encode() for k, v in form.fields.items()}
        targets = [*base, b"fuzz_field"]  # every field, and one the form does not have
        for target in targets:
            for name, value in HOSTILE.items():
                fields = {b"csrf_token": token, **base, target: value}
                refused = name in REFUSED
                post(form, urlencoded(fields, raw=False),
                     "application/x-www-form-urlencoded", f"{target!r}={name} (encoded)",
                     refused)
                if name != "overlong":
                    post(form, urlencoded(fields, raw=True),
                         "application/x-www-form-urlencoded", f"{target!r}={name} (raw)",
                         refused)
                    post(form, multipart(fields), "multipart/form-data; boundary=fuzzboundary",
                         f"{target!r}={name} (multipart)", refused)
        # the hostile text in a field's name
        for name in ("nul", "controls"):
            fields = {b"csrf_token": token, **base, b"field" + HOSTILE[name]: b"x"}
            post(form, urlencoded(fields, raw=False), "application/x-www-form-urlencoded",
                 f"a field named with {name}", True)
    FIGURES.update(routes=len(forms), requests=sent, statuses=statuses,
                   seconds=round(time.monotonic() - started, 1))
    print(f"form fuzz: {FIGURES}")  # noqa: T201 - the figures of the run, for the report
    assert not failures, "\n".join(failures[:40])
    # the router's forms were all found, the tenant areas' included
    assert len(forms) >= 60 and any(f.path.startswith("/tenants/{tenant_id:int}/gateway")
                                    for f in forms)
    assert {"/sign-in", "/users", "/tenants/{tenant_id:int}/approvals/requests"} <= {
        f.path for f in forms}
