"""The dashboard's backups section: each tenant's last backup and last drill result, and a
warning when a tenant has no backup or no passing drill."""

from __future__ import annotations

import html
import re

from control_plane.backups.restore import drill_tenant
from control_plane.backups.service import backup_tenant
from tests.control_plane.backups.conftest import ACTOR
from tests.factories import sign_in


def section(client) -> str:
    page = client.get("/")
    assert page.status_code == 200
    found = re.findall(r'<section class="card" data-testid="backups">(.*?)</section>', page.text,
                       re.S)
    assert len(found) == 1
    return found[0]


def text_of(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def rows(el: str) -> dict[str, list[str]]:
    out = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", el.split("<tbody>")[1], re.S):
        cells = [text_of(td) for td in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
        out[cells[0]] = cells
    return out


def attention(el: str) -> str:
    found = re.findall(r'data-testid="backups-attention">(.*?)</p>', el, re.S)
    return text_of(found[0]) if found else ""


def test_last_backup_and_drill_per_tenant(world, client):
    assert sign_in(client, "owner@example.com").status_code == 303
    before = section(client)
    assert rows(before)["acme"][1] == "none" and rows(before)["acme"][2] == "never"
    assert "2 tenant(s) need attention" in attention(before)
    done = backup_tenant(world.services.session_factory, world.services.tenant_connections,
                         world.destination, world.tenant_id, actor=ACTOR)
    drill_tenant(world.services.session_factory, world.services.tenant_connections,
                 world.opener, world.tenant_id, actor=ACTOR)
    after = section(client)
    acme = rows(after)["acme"]
    assert done.backup_id in acme[1] and acme[3] == "passed"
    assert "1 tenant(s) need attention" in attention(after)  # globex has no backup
