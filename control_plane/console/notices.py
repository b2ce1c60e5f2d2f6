"""Post/Redirect/Get: a form that succeeded redirects to the page it belongs to with
``?done=<code>``, and that page shows the sentence for the code. Only known codes and integer
parameters are read from the address, so a crafted link cannot put words in the page's mouth."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

NOTICES: dict[str, str] = {
    "member-added": "Member added.",
    "member-removed": "Member removed.",
    "member-role": "Role changed.",
    "key-revoked": "API key revoked.",
    "suspended": "The tenant is suspended: its API keys and pages are refused until it is "
                 "resumed.",
    "resumed": "The tenant is active again.",
    "rotation-queued": "Key rotation queued (job {job}): a worker will rewrap the data key. "
                       "The jobs page shows its progress.",
    "reencrypt-queued": "Key rotation queued (job {job}): a worker will rewrap the data key "
                        "and re-encrypt every sealed value. The jobs page shows its progress.",
    "restore-as-queued": "Restore as a new tenant queued (job {job}): a worker restores the "
                         "backup, verifies it and makes you the new tenant's Owner. The jobs "
                         "page shows its progress.",
    "replace-queued": "Replacement queued (job {job}): a worker restores the backup, verifies "
                      "it, then swaps it in; the replaced database is retained, closed. The "
                      "jobs page shows its progress.",
    "tenant-deleted": "The tenant is being deleted: its database, roles and data keys are "
                      "destroyed. A tombstone records who, when and why.",
    "mfa-enforced": "Members of this tenant must now use two-factor sign-in.",
    "mfa-optional": "Two-factor sign-in is no longer required for this tenant.",
    "sso-required": "The single sign-on policy of this tenant was saved: its members sign in "
                    "with the identity provider, but for the break-glass Owner.",
    "sso-optional": "The single sign-on policy of this tenant was saved: single sign-on is "
                    "not required.",
    "sso-provider-saved": "The identity provider was saved; the change applies from each "
                          "person's next sign-in.",
    "sso-provider-unchanged": "Nothing was changed: the form was the provider as it is.",
}


def done_url(path: str, code: str, **params: int) -> str:
    if code not in NOTICES:
        raise KeyError(code)
    return f"{path}?{urlencode({'done': code, **params})}"


def notice_from(query: Mapping[str, str]) -> str | None:
    """The sentence for ``?done=`` (None for an unknown code or a non-integer parameter)."""
    template = NOTICES.get(query.get("done", ""))
    if template is None:
        return None
    try:
        params = {k: int(v) for k, v in query.items() if k != "done"}
        return template.format(**params)
    except (ValueError, KeyError, IndexError):
        return None
