"""Consent: what the tenant has agreed may be learned from its sources.

    the master switch   ``MinimizationSettings.stakeholder_extraction``, off by default: while it
                        is off no extractor writes an observation, whatever the grants say
    a source's grant    ``Source.granted``: nothing is imported from a source without one (the
                        refusal is counted on the source and audited, signals/service.py)

Only an Owner changes either (``consent.manage``). Each change is an audit event written in the
caller's transaction, naming who made it; ``granted_by`` / ``granted_at`` record who last granted
or withdrew a source's grant, and when. Setting a value it already has changes nothing and
records nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.context import Actor
from tenant_runtime.exceptions import TenantNotFound
from tenant_runtime.minimization.models import MinimizationSettings
from tenant_runtime.models import single_row
from tenant_runtime.signals.models import Source


class ConsentEvents:
    EXTRACTION_ENABLED = "consent.extraction_enabled"
    EXTRACTION_DISABLED = "consent.extraction_disabled"
    SOURCE_GRANTED = "consent.source_granted"
    SOURCE_WITHDRAWN = "consent.source_withdrawn"


def extraction_enabled(s: Session) -> bool:
    """Whether the tenant-wide master switch for stakeholder extraction is on."""
    return bool(single_row(s, MinimizationSettings).stakeholder_extraction)


def do_set_extraction(s: Session, *, enabled: bool, acting_user: Actor) -> bool:
    """Turn the master switch on or off; whether it changed."""
    row = single_row(s, MinimizationSettings)
    row = s.scalars(select(MinimizationSettings).where(MinimizationSettings.id == row.id)
                    .with_for_update().execution_options(populate_existing=True)).one()
    if row.stakeholder_extraction == enabled:
        return False
    row.stakeholder_extraction = enabled
    row.updated_at = datetime.now(UTC)
    audit.record(s, ConsentEvents.EXTRACTION_ENABLED if enabled
                 else ConsentEvents.EXTRACTION_DISABLED, actor=acting_user,
                 target_type="minimization_settings", target_id=row.id,
                 details={"stakeholder_extraction": enabled})
    return True


def _locked_source(s: Session, source_id: int) -> Source:
    source = s.scalars(select(Source).where(Source.id == source_id).with_for_update()
                       .execution_options(populate_existing=True)).first()
    if source is None:
        raise TenantNotFound("There is no such source.")
    return source


def _set_grant(s: Session, source_id: int, granted: bool, acting_user: Actor) -> bool:
    source = _locked_source(s, source_id)
    if source.granted == granted:
        return False
    source.granted = granted
    source.granted_by = acting_user.name
    source.granted_at = datetime.now(UTC)
    audit.record(s, ConsentEvents.SOURCE_GRANTED if granted else ConsentEvents.SOURCE_WITHDRAWN,
                 actor=acting_user, target_type="source", target_id=source.id,
                 details={"source": source.name, "kind": source.kind})
    return True


def do_grant_source(s: Session, source_id: int, *, acting_user: Actor) -> bool:
    """Grant ingestion from a source; whether it changed (an unknown id: TenantNotFound)."""
    return _set_grant(s, source_id, True, acting_user)


def do_withdraw_source(s: Session, source_id: int, *, acting_user: Actor) -> bool:
    """Withdraw a source's grant: nothing more is imported from it until it is granted again.
    What was imported stays (retention removes it in time; removing the source removes it
    now)."""
    return _set_grant(s, source_id, False, acting_user)
