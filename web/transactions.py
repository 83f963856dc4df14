"""The web process's one transaction model.

Every responder declares what it does to the database, and the ``SessionScope`` middleware
(web/middleware.py) opens the matching session, ends it, and then runs the request's after-commit
hooks. A responder never commits, rolls back or closes a session itself, and never sends anything
that announces a write (a job message, a Socket.IO event) before that write is committed: it
registers the send with ``after_commit`` instead (warehouse's after-commit hooks; Zulip's
``send_event_on_commit``).

- ``@reads``: an autocommit session that refuses writes. BEGIN and ROLLBACK would only add two round
  trips to every poll of a job, page of a list or leaderboard.
- ``@writes``: one transaction, committed by the middleware when the responder succeeded and rolled
  back otherwise; the hooks run only after that commit.
- ``@writes_one_statement``: an autocommit session for a responder whose only write is one
  statement (a team's job INSERT): the statement is its own transaction, so the hot path of a live
  round pays no BEGIN or COMMIT. The hooks run once the responder succeeded, as the statement is
  committed by then.

A responder without a declaration gets no session at all (``req.context.session`` is unset), so
it fails at its first query instead of silently writing outside a transaction; a test walks
every route of ``create_app`` and checks that each responder declares one.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import falcon
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

log = logging.getLogger(__name__)

Responder = TypeVar("Responder", bound=Callable[..., None])
Hook = Callable[[], None]


class Mode(enum.Enum):
    READS = "reads"
    WRITES = "writes"
    WRITES_ONE_STATEMENT = "writes-one-statement"


class WriteInReadOnlyRequest(RuntimeError):
    """A responder declared ``@reads`` tried to write: a bug, answered as one (500, logged)."""


def _declare(responder: Responder, mode: Mode) -> Responder:
    @functools.wraps(responder)
    def declared(resource: Any, req: falcon.Request, resp: falcon.Response, *args: Any, **params: Any) -> None:
        req.context.session = req.context.transaction.open(mode)
        responder(resource, req, resp, *args, **params)

    declared.transaction_mode = mode  # type: ignore[attr-defined]
    return declared  # type: ignore[return-value]


def reads(responder: Responder) -> Responder:
    """The responder writes nothing: an autocommit session that refuses writes."""
    return _declare(responder, Mode.READS)


def writes(responder: Responder) -> Responder:
    """The responder's writes are one transaction, committed by the middleware if it succeeds."""
    return _declare(responder, Mode.WRITES)


def writes_one_statement(responder: Responder) -> Responder:
    """The responder's only write is one statement, which commits on its own (an autocommit
    session): no BEGIN or COMMIT round trip. A second write would not be atomic with the first:
    such a responder needs ``@writes``."""
    return _declare(responder, Mode.WRITES_ONE_STATEMENT)


def mode_of(responder: Any) -> Mode | None:
    """The declared mode of a responder (a function or a bound method), None if it declares none."""
    return getattr(responder, "transaction_mode", None)


def after_commit(req: falcon.Request, hook: Hook) -> None:
    """Run ``hook`` once the request's writes are committed, never if they are not.

    Hooks run in the order they were added, in the middleware, before any other middleware sees the
    response, so a hook may still write it. The first hook that raises ends the run: its error is
    answered by the app's error handlers, like a responder's, although the writes are committed.
    """
    req.context.transaction.after_commit(hook)


def on_close(req: falcon.Request, cleanup: Hook) -> None:
    """Run ``cleanup`` when the request's transaction ends, however it ends (after the hooks, if any
    ran): for what must be undone whether or not the writes were committed."""
    req.context.transaction.on_close(cleanup)


def _refuse_write(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        raise WriteInReadOnlyRequest(f"a @reads responder executed a write: {state.statement}")


def _refuse_flush(session: Session, flush_context: Any, instances: Any) -> None:
    if session.new or session.dirty or session.deleted:
        raise WriteInReadOnlyRequest("a @reads responder tried to flush changed objects")


@dataclass(frozen=True)
class Sessions:
    """The session factory for each mode, built once per process."""

    transactional: sessionmaker[Session]
    autocommit: sessionmaker[Session]
    read_only: sessionmaker[Session]

    @classmethod
    def create(cls, transactional: sessionmaker[Session], autocommit: sessionmaker[Session]) -> Sessions:
        # A factory of its own, so the guards (checked in Python, no round trip) hold for reads only.
        read_only: sessionmaker[Session] = sessionmaker(**autocommit.kw)
        event.listen(read_only, "do_orm_execute", _refuse_write)
        event.listen(read_only, "before_flush", _refuse_flush)
        return cls(transactional=transactional, autocommit=autocommit, read_only=read_only)

    def for_mode(self, mode: Mode) -> sessionmaker[Session]:
        if mode is Mode.WRITES:
            return self.transactional
        return self.read_only if mode is Mode.READS else self.autocommit


class Transaction:
    """One request's unit of work: its session, its after-commit hooks and its cleanups.

    Created by the middleware for every request; a session exists only once a declared responder
    runs, and a session takes a pooled connection only at its first statement (so /healthz takes
    none).
    """

    __slots__ = ("_cleanups", "_hooks", "_sessions", "mode", "session")

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions
        self.mode: Mode | None = None
        self.session: Session | None = None
        self._hooks: list[Hook] = []
        self._cleanups: list[Hook] = []

    def open(self, mode: Mode) -> Session:
        if self.session is not None:
            # A responder calling another declared responder: the outer declaration rules.
            return self.session
        self.mode = mode
        self.session = self._sessions.for_mode(mode)()
        return self.session

    def after_commit(self, hook: Hook) -> None:
        if self.session is None:
            raise RuntimeError("after_commit outside a declared responder: nothing would commit")
        self._hooks.append(hook)

    def on_close(self, cleanup: Hook) -> None:
        self._cleanups.append(cleanup)

    def end(self, succeeded: bool) -> bool:
        """Commit (``@writes`` whose responder succeeded) or roll back, and close; whether the
        after-commit hooks are due. Raises what the commit raised, the session closed."""
        session = self.session
        if session is None:
            return False
        try:
            if self.mode is Mode.WRITES:
                if succeeded:
                    session.commit()
                else:
                    session.rollback()
            # Autocommit sessions: each statement committed as it ran; closing returns the connection.
        finally:
            session.close()
        return succeeded

    def run_hooks(self) -> None:
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def run_cleanups(self) -> None:
        cleanups, self._cleanups = self._cleanups, []
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception:
                # A cleanup must not hide the request's own outcome; each one still runs.
                log.exception("request cleanup %r failed", cleanup)
