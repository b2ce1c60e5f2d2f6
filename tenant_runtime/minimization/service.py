"""Minimization settings an Owner changes from the teams page: the k of k-anonymity (at least 3,
only ever configurable upward from there) and how long observations and signals are kept
(``retention.py`` sweeps them). The stakeholder-extraction switch and source grants are the
signals area's Consent section. Every change is audited in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.minimization.models import K_ANONYMITY_FLOOR, MinimizationSettings
from tenant_runtime.models import single_row

K_ANONYMITY_MAX = 100  # a larger k hides every team of any real tenant
RETENTION_MIN_DAYS, RETENTION_MAX_DAYS = 1, 3660


class MinimizationEvents:
    SETTINGS_CHANGED = "minimization.settings_changed"


def load_settings(s: Session) -> MinimizationSettings:
    return single_row(s, MinimizationSettings)


def k_anonymity(s: Session) -> int:
    return max(K_ANONYMITY_FLOOR, int(load_settings(s).k_anonymity))


@dataclass(frozen=True)
class SettingsChange:
    k_anonymity: int
    retention_days: int


def _whole(raw: str, sentence: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise TenantInvalidInput(sentence) from None


def parse_settings(k_raw: str, retention_raw: str) -> SettingsChange:
    """The form's text as a change; TenantInvalidInput with one sentence when it is not one."""
    k_sentence = (f"k-anonymity must be a whole number from {K_ANONYMITY_FLOOR} to "
                  f"{K_ANONYMITY_MAX}: a group of fewer than {K_ANONYMITY_FLOOR} people is "
                  "never shown, so k can only be raised.")
    k = _whole(k_raw, k_sentence)
    if not K_ANONYMITY_FLOOR <= k <= K_ANONYMITY_MAX:
        raise TenantInvalidInput(k_sentence)
    days_sentence = (f"Retention must be a whole number of days from {RETENTION_MIN_DAYS} to "
                     f"{RETENTION_MAX_DAYS} (396 days is 13 months).")
    days = _whole(retention_raw, days_sentence)
    if not RETENTION_MIN_DAYS <= days <= RETENTION_MAX_DAYS:
        raise TenantInvalidInput(days_sentence)
    return SettingsChange(k, days)


def do_update_settings(s: Session, ctx: TenantContext, change: SettingsChange) -> list[str]:
    """Apply ``change``; returns the names of the fields that changed (audited with their old
    and new values), nothing when none did."""
    row = load_settings(s)
    new = {"k_anonymity": change.k_anonymity, "retention_days": change.retention_days}
    old = {name: getattr(row, name) for name in new}
    changed = [name for name in new if old[name] != new[name]]
    if not changed:
        return []
    for name in changed:
        setattr(row, name, new[name])
    row.updated_at = datetime.now(UTC)
    audit.record(s, MinimizationEvents.SETTINGS_CHANGED, actor=ctx.actor,
                 target_type="minimization_settings", target_id=1,
                 details={"changed": changed,
                          **{name: {"from": old[name], "to": new[name]} for name in changed}})
    return changed
