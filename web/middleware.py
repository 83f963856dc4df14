"""Cross-cutting request handling: the transaction per request, request ids and response headers."""

from __future__ import annotations

from typing import Any

import falcon
from sqlalchemy.orm import Session, sessionmaker

import logs
from settings import Settings
from web.transactions import Sessions, Transaction

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class SessionScope:
    """Owns each request's transaction (web/transactions.py): the responder's declaration picks the
    session, and here it is committed or rolled back and closed, then the after-commit hooks run.

    The last middleware, so its ``process_response`` runs first: a hook can still set the response
    (``Prefer: wait`` answers 200 with the finished job) before the other middleware see it. Falcon
    hands an exception raised here to the app's error handlers (a failed commit becomes the same
    problem+json as if the responder had raised it) and runs the other middleware all the same.
    """

    def __init__(self, sessions: sessionmaker[Session], autocommit: sessionmaker[Session]) -> None:
        self.sessions = Sessions.create(sessions, autocommit)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.transaction = Transaction(self.sessions)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        transaction: Transaction | None = getattr(req.context, "transaction", None)
        if transaction is None:
            return
        try:
            try:
                committed = transaction.end(req_succeeded)
            except Exception:
                # The responder may have named what it created; the failed commit did not create it.
                resp.delete_header("Location")
                raise
            if committed:
                transaction.run_hooks()
        finally:
            transaction.run_cleanups()


class ResponseHeaders:
    def __init__(self, settings: Settings) -> None:
        self.origins = set(settings.cors_origins)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        for name, value in SECURITY_HEADERS.items():
            if resp.get_header(name) is None:
                resp.set_header(name, value)
        origin = req.get_header("Origin")
        if origin and ("*" in self.origins or origin in self.origins):
            resp.set_header("Access-Control-Allow-Origin", origin)
            resp.append_header("Vary", "Origin")
            resp.set_header("Access-Control-Expose-Headers", "Location, Retry-After, Preference-Applied")
            if req.method == "OPTIONS":
                resp.set_header("Access-Control-Allow-Methods", "GET, POST, PATCH, PUT, DELETE, OPTIONS")
                resp.set_header("Access-Control-Allow-Headers",
                                "Authorization, Content-Type, Prefer, Idempotency-Key")
                resp.set_header("Access-Control-Max-Age", "600")


class RequestId:
    """Every request has an id: the client's ``X-Request-ID`` when sane, or a new one. It is returned in
    the response, carried by the log lines of this thread and sent with the job to its consumer."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        request_id = logs.new_request_id(req.get_header("X-Request-ID"))
        req.context.request_id = request_id
        req.context.request_id_token = logs.set_request_id(request_id)
        resp.set_header("X-Request-ID", request_id)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        token = getattr(req.context, "request_id_token", None)
        if token is not None:
            logs.reset_request_id(token)
            req.context.request_id_token = None
