"""What a request would send, shown to the people who decide it: the arguments of a governed
MCP tool call waiting for approval (tenant_runtime/mcp/gate.py).

- ``do_seal_arguments``: the arguments, as pretty JSON, sealed on the request
  (``approval_requests.arguments_sealed``, ``pii``, row key the request's id) in the request's
  own transaction. For an ``external`` upstream they are the redacted form, what would leave
  the platform, and the document says so. At most ``MAX_SHOWN_BYTES`` are kept; the size of the
  rest is kept as a number ("… N more bytes"), so nothing is stored that nobody can see.
- ``may_see_arguments``: signed-in members whose role may decide the request (its approver
  role, or the tenant's Owner), whatever its state, so an approver can still read what was
  approved afterwards. Nobody else: not the other roles, not an API key, and not the requester
  unless her own role is an approving one (they are her own agent's arguments then, nothing
  she could not know).
- ``arguments_for``: the opened arguments for that viewer, or ``None``.

Arguments never leave the platform through the approval e-mail or webhooks (notify.py): those
carry the tool, the upstream and a link to the request's page, which needs sign-in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tenant_runtime.approvals.models import ApprovalRequest
from tenant_runtime.approvals.service import may_decide
from tenant_runtime.context import Actor, TenantContext

TABLE, COLUMN = "approval_requests", "arguments_sealed"
MAX_SHOWN_BYTES = 16 * 1024


@dataclass(frozen=True)
class ArgumentsView:
    text: str  # pretty JSON, at most MAX_SHOWN_BYTES of it
    more_bytes: int  # how many bytes of it are not kept
    redacted: bool  # the redacted form (an external upstream)
    redactions: int  # values the redaction replaced


def _cut(text: str, limit: int) -> tuple[str, int]:
    data = text.encode()
    if len(data) <= limit:
        return text, 0
    kept = data[:limit].decode(errors="ignore")  # never half a character
    return kept, len(data) - len(kept.encode())


def do_seal_arguments(ctx: TenantContext, req: ApprovalRequest, arguments: dict[str, Any], *,
                      redacted: bool = False, redactions: int = 0) -> None:
    """Seal what the request would send (see the module's docstring); the caller's
    transaction (the request was flushed, so it has its id)."""
    text, more = _cut(json.dumps(arguments, indent=2, ensure_ascii=False, sort_keys=True),
                      MAX_SHOWN_BYTES)
    document = {"text": text, "more_bytes": more, "redacted": redacted,
                "redactions": redactions}
    req.arguments_sealed = ctx.sealer.seal(json.dumps(document, ensure_ascii=False),
                                           table=TABLE, column=COLUMN, row_key=str(req.id))


def may_see_arguments(actor: Actor, req: ApprovalRequest) -> bool:
    return actor.type == "user" and actor.id is not None \
        and may_decide(actor.role, req.approver_role)


def arguments_for(ctx: TenantContext, req: ApprovalRequest) -> ArgumentsView | None:
    """The request's arguments opened for the acting member, or None (none kept, or not hers
    to see)."""
    if req.arguments_sealed is None or not may_see_arguments(ctx.actor, req):
        return None
    document = json.loads(ctx.sealer.open_text(req.arguments_sealed, table=TABLE,
                                               column=COLUMN, row_key=str(req.id)))
    return ArgumentsView(str(document["text"]), int(document["more_bytes"]),
                         bool(document["redacted"]), int(document["redactions"]))
