"""The independent SCIM checker, ``scim2-tester``, run against the real app served by uvicorn
on a loopback port, through its own SCIM client (scim2-client over HTTP).

Its report is committed in ``ops/SCIM_CONFORMANCE.md``; ``MAGISTRATE_WRITE_SCIM_REPORT=1``
writes it again. The test fails on any check the tester marks an error or critical, and when the
committed report no longer matches what the tester says (so the report cannot go stale)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server
from sqlalchemy import select

from control_plane.models import IdentityProvider, User
from control_plane.scim import service as scim
from tests.conftest import make_settings
from tests.factories import make_user
from tests.live_server import Port, serve

REPORT = Path(__file__).resolve().parents[3] / "ops" / "SCIM_CONFORMANCE.md"
FAILING = (Status.ERROR, Status.CRITICAL)
# What the tester calls an error and Magistrate does on purpose: (resource, check, attribute)
# → why. Anything else the tester marks an error fails this test.
KNOWN = {
    ("User", "check_remove_attribute", "active"):
        "An account is active or deactivated; removing `active` leaves it as it is.",
    ("User", "check_remove_attribute", "emails"):
        "The account keeps its e-mail (how sign-in finds it); removing `emails` shows that "
        "one e-mail again.",
    ("Group", "check_add_attribute", "members"):
        "A member's `display` is the member's e-mail here, not the text the client sent.",
    ("Group", "check_replace_attribute", "members"):
        "Likewise: a member's `display` is the member's e-mail.",
}


def key(result) -> tuple[str, str, str]:  # noqa: ANN001
    data = result.data if isinstance(result.data, dict) else {}
    return (result.resource_type or "", result.title or "", str(data.get("urn", "")))


@pytest.fixture
def live_port() -> Iterator[Port]:
    """The live server's port, held from now (its number goes into the settings)."""
    with Port() as port:
        yield port


@pytest.fixture
def settings(live_port: Port):  # noqa: ANN201 - the app answers on the live server's address
    return make_settings(public_url=live_port.url,
                         allowed_hosts=("127.0.0.1",))


def render(results: list, version: str) -> str:
    counts = Counter(r.status.name for r in results)
    lines = [
        "# SCIM conformance",
        "",
        f"The independent checker [`scim2-tester`](https://pypi.org/project/scim2-tester/) "
        f"{version}, run against Magistrate's `/scim/v2` by",
        "`tests/control_plane/identity/test_scim_conformance.py` (the real app under uvicorn, "
        "the tester's own",
        "HTTP client). Regenerate with `MAGISTRATE_WRITE_SCIM_REPORT=1` and that test; the test "
        "fails when",
        "this file no longer matches what the tester says.",
        "",
        "This tester version does not exercise filters beyond `eq` nor sorting (the server "
        "advertises both",
        "in `ServiceProviderConfig`); `tests/control_plane/identity/test_scim_filters.py` "
        "checks `co`, `sw`, `ew`,",
        "`ne`, `gt`..`le`, `pr`, `and`, `or`, `not`, `sortBy`/`sortOrder` and each refusal "
        "(400 `invalidFilter`).",
        "",
        "| status | checks |",
        "| --- | --- |",
        *[f"| {name} | {counts[name]} |" for name in sorted(counts)],
        "",
        "| status | resource | check | reason |",
        "| --- | --- | --- | --- |",
    ]
    for r in sorted(results, key=lambda r: (r.status.value, r.resource_type or "",
                                            r.title or "", key(r)[2])):
        reason = (r.reason or "").replace("|", "\\|").replace("\n", " ")
        if r.status in FAILING or len(reason) > 160:
            reason = reason.split(".")[0][:160]  # the first sentence: no random test values
        lines.append(f"| {r.status.name} | {r.resource_type or ''} | {r.title or ''} | "
                     f"{reason} |")
    lines += ["", "## Known deviations", "",
              "The errors above are choices, each checked by the test:", ""]
    lines += [f"- {resource} `{check}` on `{urn}`: {why}"
              for (resource, check, urn), why in sorted(KNOWN.items())]
    return "\n".join(lines) + "\n"


def test_scim2_tester_finds_no_error(services, db, live_port):
    from importlib.metadata import version

    make_user(db, "root@magistrate.example")
    with db() as s, s.begin():
        provider = IdentityProvider(name="conformance", discovery_url="https://idp.example/d",
                                    issuer="https://idp.example", client_id="magistrate")
        s.add(provider)
        s.flush()
        owner = s.scalars(select(User)).one()
        _, secret = scim.do_create_token(s, provider, label="scim2-tester", acting_user=owner)
    with serve(services, live_port) as url:
        http = httpx2.Client(base_url=f"{url}/scim/v2",
                             headers={"Authorization": f"Bearer {secret}"}, timeout=30)
        client = SyncSCIMClient(http)
        results = check_server(client)
        http.close()
    text = render(results, version("scim2-tester"))
    if os.environ.get("MAGISTRATE_WRITE_SCIM_REPORT") == "1":
        REPORT.write_text(text)
    failing = [r for r in results if r.status in FAILING and key(r) not in KNOWN]
    assert failing == [], "\n".join(repr(r)[:600] for r in failing)
    assert len(results) >= 40
    assert Counter(r.status.name for r in results)["SUCCESS"] >= 40
    expected = REPORT.read_text()
    assert _summary(expected) == _summary(text), "ops/SCIM_CONFORMANCE.md is stale"


def _summary(report: str) -> list[str]:
    """The report's lines without the tester's own random values (ids, URLs, ports): the
    status counts and each check's status, resource and title."""
    out = []
    for line in report.splitlines():
        cells = [c.strip() for c in line.split("|")]
        out.append(" | ".join(cells[:4]) if len(cells) > 4 else line)
    return sorted(out)
