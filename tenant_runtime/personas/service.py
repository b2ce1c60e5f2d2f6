"""Personas: an Owner defines which teams and which sources a member may see, and assigns them.
State changes (``do_*``) are audited in the caller's transaction; ``access_persona`` answers
the same "not found" for a missing id as for any other.

Members live in the control-plane database, which tenant code cannot read: the web app hands
the member list in (``app.state.tenant_members``), and an assignment names a member by their
control-plane user id (``Actor.id`` of a signed-in user). ``scope.py`` turns assignments into
the filter every scoped query applies."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput, TenantNotFound
from tenant_runtime.personas.models import Persona, PersonaAssignment
from tenant_runtime.personas.scope import EVERY, UNSCOPED_ROLES
from tenant_runtime.signals.models import Source

MAX_TEAMS = 200
MAX_NAME = 100
_SPLIT = re.compile(r"[,\n\r]+")


class PersonaEvents:
    CREATED = "persona.created"
    CHANGED = "persona.changed"
    DELETED = "persona.deleted"
    ASSIGNED = "persona.assigned"
    UNASSIGNED = "persona.unassigned"


@dataclass(frozen=True)
class Member:
    """A member of the tenant, as the control plane reports them."""

    user_id: str
    email: str
    role: str


@dataclass(frozen=True)
class PersonaInput:
    name: str
    teams: tuple[str, ...] | None  # None: every team
    source_ids: tuple[int, ...] | None  # None: every source

    def stored_teams(self) -> list[str]:
        return [EVERY] if self.teams is None else list(self.teams)

    def stored_sources(self) -> list[int | str]:
        return [EVERY] if self.source_ids is None else list(self.source_ids)


def _items(raw: str) -> list[str]:
    """Comma- or line-separated items, stripped, without blanks or repeats (first kept)."""
    seen: dict[str, None] = {}
    for item in _SPLIT.split(raw):
        if item.strip():
            seen.setdefault(item.strip(), None)
    return list(seen)


def parse_persona(s: Session, *, name: str, teams: str, all_teams: bool, sources: str,
                  all_sources: bool) -> PersonaInput:
    """The form's fields as a persona; TenantInvalidInput with one sentence when they are not.

    Teams are free text (a task's or signal's team, exactly as written there); sources are
    named, and each name must be one of the tenant's sources. A persona must name at least one
    team (or every team): one without would show nothing at all. It may name no source: its
    members then see tasks of their teams but no signal or observation."""
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise TenantInvalidInput(f"Give the persona a name of 1 to {MAX_NAME} characters.")
    team_list: tuple[str, ...] | None = None
    if not all_teams:
        team_list = tuple(_items(teams))
        if not team_list:
            raise TenantInvalidInput("Name at least one team (separated by commas or lines), "
                                     "or choose every team: a persona without a team shows "
                                     "nothing.")
        if EVERY in team_list:
            raise TenantInvalidInput(f"'{EVERY}' is not a team name; choose every team "
                                     "instead.")
        if len(team_list) > MAX_TEAMS or any(len(t) > 100 for t in team_list):
            raise TenantInvalidInput(f"A persona names at most {MAX_TEAMS} teams, each of at "
                                     "most 100 characters.")
    source_list: tuple[int, ...] | None = None
    if not all_sources:
        known = {src.name.casefold(): src.id for src in s.scalars(select(Source))}
        wanted = _items(sources)
        unknown = [w for w in wanted if w.casefold() not in known]
        if unknown:
            raise TenantInvalidInput(
                f"There is no source named {', '.join(repr(u[:100]) for u in unknown[:5])}; "
                "name sources as they appear in the list of sources, or choose every source.")
        source_list = tuple(dict.fromkeys(known[w.casefold()] for w in wanted))
    return PersonaInput(name, team_list, source_list)


def _name_taken(s: Session, name: str, *, other_than: int | None = None) -> bool:
    query = select(Persona.id).where(func.lower(Persona.name) == name.lower())
    if other_than is not None:
        query = query.where(Persona.id != other_than)
    return s.scalar(query.limit(1)) is not None


def _taken(name: str) -> TenantInvalidInput:
    return TenantInvalidInput(f"A persona named {name!r} already exists; choose another name.")


def access_persona(s: Session, persona_id: int) -> Persona:
    row = s.get(Persona, persona_id)
    if row is None:
        raise TenantNotFound("There is no such persona.")
    return row


def _described(p: Persona) -> dict[str, object]:
    return {"name": p.name, "teams": list(p.teams), "source_ids": list(p.source_ids)}


def do_create_persona(s: Session, ctx: TenantContext, data: PersonaInput) -> Persona:
    if _name_taken(s, data.name):
        raise _taken(data.name)
    row = Persona(name=data.name, teams=data.stored_teams(), source_ids=data.stored_sources(),
                  created_by=ctx.actor.name)
    s.add(row)
    s.flush()
    audit.record(s, PersonaEvents.CREATED, actor=ctx.actor, target_type="persona",
                 target_id=row.id, details=_described(row))
    return row


def do_update_persona(s: Session, ctx: TenantContext, persona_id: int,
                      data: PersonaInput) -> list[str]:
    """Apply ``data``; the names of the fields that changed (audited), none when none did."""
    row = access_persona(s, persona_id)
    if _name_taken(s, data.name, other_than=row.id):
        raise _taken(data.name)
    new: dict[str, object] = {"name": data.name, "teams": data.stored_teams(),
                              "source_ids": data.stored_sources()}
    changed = [field for field, value in new.items() if getattr(row, field) != value]
    if not changed:
        return []
    before = _described(row)
    for field in changed:
        setattr(row, field, new[field])
    audit.record(s, PersonaEvents.CHANGED, actor=ctx.actor, target_type="persona",
                 target_id=row.id,
                 details={"changed": changed,
                          **{f: {"from": before[f], "to": new[f]} for f in changed}})
    return changed


def do_delete_persona(s: Session, ctx: TenantContext, persona_id: int) -> str:
    """Delete the persona and its assignments; returns its name."""
    row = access_persona(s, persona_id)
    holders = sorted(s.scalars(select(PersonaAssignment.user_id)
                               .where(PersonaAssignment.persona_id == row.id)))
    details = {**_described(row), "unassigned_user_ids": holders}
    name = row.name
    s.execute(delete(PersonaAssignment).where(PersonaAssignment.persona_id == row.id))
    s.delete(row)
    s.flush()
    audit.record(s, PersonaEvents.DELETED, actor=ctx.actor, target_type="persona",
                 target_id=persona_id, details=details)
    return name


def do_assign_persona(s: Session, ctx: TenantContext, persona_id: int, user_id: str, *,
                      members: Sequence[Member]) -> bool:
    """Give member ``user_id`` the persona; False when they already hold it (nothing
    recorded). Only a member of this tenant may be given one."""
    row = access_persona(s, persona_id)
    member = next((m for m in members if m.user_id == user_id), None)
    if member is None:
        raise TenantInvalidInput("Choose a member of this tenant to give the persona to.")
    if s.get(PersonaAssignment, (user_id, row.id)) is not None:
        return False
    s.add(PersonaAssignment(user_id=user_id, persona_id=row.id, assigned_by=ctx.actor.name))
    s.flush()
    audit.record(s, PersonaEvents.ASSIGNED, actor=ctx.actor, target_type="persona",
                 target_id=row.id,
                 details={"persona": row.name, "user_id": user_id, "role": member.role})
    return True


def do_unassign_persona(s: Session, ctx: TenantContext, persona_id: int, user_id: str) -> bool:
    """Take the persona from ``user_id`` (a former member too); False when they did not hold
    it (nothing recorded)."""
    row = access_persona(s, persona_id)
    held = s.get(PersonaAssignment, (user_id, row.id))
    if held is None:
        return False
    s.delete(held)
    s.flush()
    audit.record(s, PersonaEvents.UNASSIGNED, actor=ctx.actor, target_type="persona",
                 target_id=row.id, details={"persona": row.name, "user_id": user_id})
    return True


# -- the page ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonaView:
    id: int
    name: str
    every_team: bool
    teams: list[str]
    every_source: bool
    sources: list[str]  # names; a deleted source is left out
    holders: list[tuple[str, str]]  # (user id, email or a note when no longer a member)


@dataclass(frozen=True)
class MemberView:
    user_id: str
    email: str
    role: str
    personas: list[str]
    sees: str  # a sentence: what this member's scope is


def list_personas(s: Session, members: Sequence[Member]) -> list[PersonaView]:
    names = {src.id: src.name for src in s.scalars(select(Source))}
    email = {m.user_id: m.email for m in members}
    holders: dict[int, list[str]] = {}
    for a in s.scalars(select(PersonaAssignment).order_by(PersonaAssignment.assigned_at)):
        holders.setdefault(a.persona_id, []).append(a.user_id)
    views = []
    for p in s.scalars(select(Persona).order_by(func.lower(Persona.name))):
        every_source = EVERY in p.source_ids
        views.append(PersonaView(
            p.id, p.name, EVERY in p.teams, [t for t in p.teams if t != EVERY],
            every_source, sorted(names[int(i)] for i in p.source_ids
                                 if i != EVERY and int(i) in names),
            [(uid, email.get(uid, f"user {uid} (no longer a member)"))
             for uid in holders.get(p.id, [])]))
    return views


def member_views(personas: Sequence[PersonaView], members: Sequence[Member]) -> list[MemberView]:
    held: dict[str, list[str]] = {}
    for p in personas:
        for uid, _ in p.holders:
            held.setdefault(uid, []).append(p.name)
    views = []
    for m in members:
        names = held.get(m.user_id, [])
        if m.role in UNSCOPED_ROLES:
            sees = f"everything ({m.role}s are not scoped)"
        elif not personas:
            sees = "everything, until the first persona is defined"
        elif not names:
            sees = "nothing: no persona assigned"
        else:
            sees = "the teams and sources of " + ", ".join(names)
        views.append(MemberView(m.user_id, m.email, m.role, names, sees))
    return views
