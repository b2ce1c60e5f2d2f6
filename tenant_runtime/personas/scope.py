"""What a member may see: the teams and sources of their personas, applied on the server to
every query that returns observations, tasks, signals or aggregates, whatever the request asks.

    Owner, Admin             every team and source (they define personas and run the tenant)
    no persona in the tenant every team and source: personas are not in use yet
    otherwise                the union of the member's personas; none assigned: nothing

A persona's ``teams`` or ``source_ids`` may hold ``"*"``: every team, or every source. An empty
list means none, never all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, false, select, true
from sqlalchemy.orm import Session

from tenant_runtime.context import Actor
from tenant_runtime.personas.models import Persona, PersonaAssignment

EVERY = "*"
UNSCOPED_ROLES = ("Owner", "Admin")


@dataclass(frozen=True)
class Scope:
    teams: frozenset[str] | None  # None: every team
    source_ids: frozenset[int] | None  # None: every source

    @property
    def unrestricted(self) -> bool:
        return self.teams is None and self.source_ids is None

    def sees_team(self, team: str) -> bool:
        return self.teams is None or team in self.teams

    def sees_source(self, source_id: int) -> bool:
        return self.source_ids is None or source_id in self.source_ids

    def team_filter(self, column: Any) -> ColumnElement[bool]:
        """A WHERE clause keeping rows whose team is in scope."""
        if self.teams is None:
            return true()
        if not self.teams:
            return false()
        return column.in_(sorted(self.teams))  # type: ignore[no-any-return]

    def source_filter(self, column: Any) -> ColumnElement[bool]:
        if self.source_ids is None:
            return true()
        if not self.source_ids:
            return false()
        return column.in_(sorted(self.source_ids))  # type: ignore[no-any-return]


EVERYTHING = Scope(None, None)
NOTHING = Scope(frozenset(), frozenset())


def scope_for(s: Session, actor: Actor) -> Scope:
    """The scope of ``actor`` in this tenant (see the module docstring)."""
    if actor.type == "system" or actor.role in UNSCOPED_ROLES:
        return EVERYTHING
    if s.scalar(select(Persona.id).limit(1)) is None:
        return EVERYTHING
    if actor.type != "user" or actor.id is None:
        return NOTHING
    personas = s.scalars(select(Persona).join(
        PersonaAssignment, PersonaAssignment.persona_id == Persona.id).where(
        PersonaAssignment.user_id == actor.id)).all()
    if not personas:
        return NOTHING
    teams: set[str] = set()
    sources: set[int] = set()
    every_team = every_source = False
    for persona in personas:
        for team in persona.teams:
            if team == EVERY:
                every_team = True
            else:
                teams.add(str(team))
        for source in persona.source_ids:
            if source == EVERY:
                every_source = True
            else:
                sources.add(int(source))
    return Scope(None if every_team else frozenset(teams),
                 None if every_source else frozenset(sources))
