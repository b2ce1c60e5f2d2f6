"""What one web process keeps of the endpoint's live MCP sessions (``Mcp-Session-Id``), beside
the SDK's session manager that owns the sessions themselves: the log level each agent set
(``logging/setLevel``) and its resource subscriptions, each a task holding a subscription at
the upstream that offers the resource and relaying its ``notifications/resources/updated``.

The control plane (control_plane/api/mcp.py) runs the book for the manager's lifetime and
calls ``forget`` when a session ends (DELETE, idle expiry, shutdown): its subscriptions end
at the upstreams with it. Nothing here decides a rule: a subscription is decided by
gate.plan_read as a read of the resource, before it is made (server.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import TaskGroup, TaskStatus

log = logging.getLogger("magistrate.mcp")
SESSION_HEADER = "mcp-session-id"
MAX_SUBSCRIPTIONS = 32  # per session
LEVELS: tuple[types.LoggingLevel, ...] = ("debug", "info", "notice", "warning", "error",
                                          "critical", "alert", "emergency")

Watch = Callable[..., Awaitable[None]]  # (stop, task_status=...): holds until ``stop`` is set
UNSUBSCRIBE_WAIT = 10.0  # seconds an unsubscribe waits for the upstream to hear it


@dataclass
class Subscription:
    stop: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class SessionState:
    level: types.LoggingLevel | None = None
    subscriptions: dict[str, Subscription] = field(default_factory=dict)

    def shows(self, level: types.LoggingLevel) -> bool:
        """Whether a log message of ``level`` reaches the agent (all of them until it set a
        level)."""
        return self.level is None or LEVELS.index(level) >= LEVELS.index(self.level)


class SessionBook:
    """Per-process state of the live sessions, by session id."""

    def __init__(self) -> None:
        self.states: dict[str, SessionState] = {}
        self._tasks: TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            try:
                yield
            finally:
                self._tasks = None
                self.states.clear()
                tg.cancel_scope.cancel()

    def state(self, session_id: str) -> SessionState:
        return self.states.setdefault(session_id, SessionState())

    def forget(self, session_id: str) -> None:
        """The session ended: its subscriptions end with it (each unsubscribes at its
        upstream and closes its connection there)."""
        state = self.states.pop(session_id, None)
        for subscription in (state.subscriptions.values() if state else ()):
            subscription.stop.set()

    async def subscribe(self, session_id: str, uri: str, watch: Watch) -> None:
        """Start ``watch`` for the session's subscription to ``uri`` (the URI the agent used);
        the upstream's refusal is raised here. Subscribing again to the same URI is a no-op,
        as the specification has it."""
        state = self.state(session_id)
        if uri in state.subscriptions:
            return
        if len(state.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise OverflowError(f"A session holds at most {MAX_SUBSCRIPTIONS} resource "
                                "subscriptions; unsubscribe from one first.")
        if self._tasks is None:
            raise RuntimeError("the MCP session book is not running")
        subscription = state.subscriptions[uri] = Subscription()
        try:
            failure = await self._tasks.start(_kept, subscription, watch, session_id)
        except BaseException:
            state.subscriptions.pop(uri, None)
            raise
        if isinstance(failure, Exception):
            state.subscriptions.pop(uri, None)
            raise failure

    async def unsubscribe(self, session_id: str, uri: str) -> None:
        """End the subscription, waiting (a while) until the upstream heard it."""
        state = self.states.get(session_id)
        subscription = state.subscriptions.pop(uri, None) if state else None
        if subscription is None:
            return
        subscription.stop.set()
        with anyio.move_on_after(UNSUBSCRIBE_WAIT):
            await subscription.done.wait()


async def _kept(subscription: Subscription, watch: Watch, session_id: str, *,
                task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
    """Run one subscription's watch in the book's task group: a failure before it started is
    handed to the starter (``subscribe`` raises it); one after is logged, and ends only this
    subscription."""
    began = False

    class Started:
        def started(self, value: Any = None) -> None:
            nonlocal began
            began = True
            task_status.started(None)

    try:
        await watch(subscription.stop, task_status=Started())
    except Exception as exc:  # noqa: BLE001 - one subscription's end is not the process's
        if not began:
            task_status.started(exc)
            return
        log.warning("MCP subscription of session %s ended: %s", session_id[:12],
                    type(exc).__name__)
    finally:
        subscription.done.set()
