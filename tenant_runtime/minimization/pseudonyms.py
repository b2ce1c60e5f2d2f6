"""People in signals are kept only as pseudonyms: ``HMAC-SHA256(tenant key, identity)``, the
first 32 hex digits. Equal identities give equal pseudonyms within a tenant (enough to count
distinct people for k-anonymity and to measure handler consistency) and different ones across
tenants; without the key, which is sealed under the tenant's data key, a pseudonym cannot be
turned back into a name, even by trying a list of likely names.

The key is 32 random bytes made on first use and stored sealed in
``MinimizationSettings.pseudonym_key_sealed`` (row key 1). An identity is normalized before it
is hashed (surrounding whitespace removed, case folded), so ``Ada@Example.com`` and
``ada@example.com`` are one person."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenant_runtime.context import TenantContext
from tenant_runtime.minimization.models import MinimizationSettings
from tenant_runtime.models import single_row

KEY_BYTES = 32
PSEUDONYM_HEX_DIGITS = 32
TABLE = "minimization_settings"
COLUMN = "pseudonym_key_sealed"


class Pseudonymizer:
    """Turns identities into pseudonyms with one tenant's key; holds the key in memory only."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("a pseudonym key is 32 bytes")
        self._key = key

    def __repr__(self) -> str:  # never the key
        return "Pseudonymizer(<key>)"

    def __call__(self, identity: str | None) -> str | None:
        """The pseudonym of ``identity``; None for no identity (None or blank)."""
        if identity is None:
            return None
        normalized = identity.strip().casefold()
        if not normalized:
            return None
        digest = hmac.new(self._key, normalized.encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[:PSEUDONYM_HEX_DIGITS]


def pseudonymizer_for(s: Session, ctx: TenantContext) -> Pseudonymizer:
    """The tenant's pseudonymizer, making (and sealing) its key on first use. Two first uses at
    once make one key: the settings row is locked while the key is made."""
    row = single_row(s, MinimizationSettings)
    sealed = row.pseudonym_key_sealed
    if sealed is None:
        row = s.scalars(select(MinimizationSettings).where(MinimizationSettings.id == row.id)
                        .with_for_update().execution_options(populate_existing=True)).one()
        sealed = row.pseudonym_key_sealed
        if sealed is None:
            sealed = ctx.sealer.seal(secrets.token_bytes(KEY_BYTES), table=TABLE,
                                     column=COLUMN, row_key=row.id)
            row.pseudonym_key_sealed = sealed
            s.flush()
    return Pseudonymizer(ctx.sealer.open(sealed, table=TABLE, column=COLUMN, row_key=row.id))
