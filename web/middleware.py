"""Cross-cutting request handling: the session per request and response headers."""

from __future__ import annotations

from typing import Any

import falcon
from sqlalchemy.orm import Session, sessionmaker

import logs
from settings import Settings

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class SessionScope:
    """One session per request: committed when the responder succeeds, rolled back otherwise.

    Reads (GET, HEAD) get an autocommit session: they write nothing, so BEGIN and COMMIT would
    only add two round trips to every poll of a job or page of a list.
    """

    def __init__(self, sessions: sessionmaker[Session], reads: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.reads = reads

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.session = (self.reads if req.method in ("GET", "HEAD") else self.sessions)()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        session: Session | None = getattr(req.context, "session", None)
        if session is None:
            return
        try:
            # A read's autocommit session has nothing to commit; closing returns its connection.
            if req.method in ("GET", "HEAD"):
                return
            if req_succeeded:
                session.commit()
            else:
                session.rollback()
        finally:
            session.close()


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
