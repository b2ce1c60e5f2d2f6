"""Internal actions: code that runs once its request is approved, in the transaction that
consumes the approval (so the approval's use and the action's effect commit together, or
neither does).

An area registers its action by name at import time::

    @register_executor("agent.promote")
    def promote(s: Session, ctx: TenantContext, payload: dict[str, Any]) -> None: ...

``request_action`` gives a registered action without a class a restricted class with the
defaults (Approver role, one approval, 24 hours), so an internal action is never unguarded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from tenant_runtime.context import TenantContext

Executor = Callable[[Session, TenantContext, dict[str, Any]], None]

_EXECUTORS: dict[str, Executor] = {}


def register_executor(name: str) -> Callable[[Executor], Executor]:
    def decorate(func: Executor) -> Executor:
        _EXECUTORS[name] = func
        return func

    return decorate


def unregister_executor(name: str) -> None:
    _EXECUTORS.pop(name, None)


def executor_for(name: str) -> Executor | None:
    return _EXECUTORS.get(name)


def internal_actions() -> list[str]:
    return sorted(_EXECUTORS)
