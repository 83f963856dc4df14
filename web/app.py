"""The Falcon application factory."""

from __future__ import annotations

import logging

import falcon
import redis
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError

from settings import Settings
from web import openapi
from web.deps import Deps
from web.errors import Problem, register_error_handlers
from web.metrics import RequestMetrics
from web.middleware import RequestId, ResponseHeaders, SessionScope
from web.pages import add_routes as add_pages
from web.ratelimit import RateLimiter, RateLimits
from web.resources import game, health, manage, organiser

log = logging.getLogger(__name__)


def _integrity_conflict(req: falcon.Request, resp: falcon.Response, ex: IntegrityError, params: dict) -> None:
    # A constraint beat a concurrent request to it: the caller lost a race, not a server bug.
    log.info("integrity conflict on %s %s: %s", req.method, req.path, ex.orig)
    raise Problem(falcon.HTTP_409, "conflict", "Conflict", "the request conflicts with the current state; retry")


def _unstorable(req: falcon.Request, resp: falcon.Response, ex: DataError, params: dict) -> None:
    # Input the schema let through but PostgreSQL cannot store (a range or encoding limit).
    # PostgreSQL's own message stays in the log: it can quote the schema and the stored values.
    log.info("data error on %s %s: %s", req.method, req.path, ex.orig)
    raise Problem(falcon.HTTP_422, "validation-error", "Request validation failed",
                  "a value is out of range or cannot be stored",
                  errors=[{"field": "body", "message": "a value is out of range or cannot be stored"}])


def _unavailable(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
    log.warning("dependency unavailable on %s %s: %s", req.method, req.path, ex)
    raise Problem(falcon.HTTP_503, "service-unavailable", "Service unavailable",
                  "the database or Redis is unreachable; retry shortly", headers={"Retry-After": "5"})


def create_app(settings: Settings, deps: Deps | None = None) -> falcon.App:
    deps = deps or Deps.create(settings)
    app = falcon.App(middleware=[
        # First, so that its response hook runs last and its timing covers the others' work.
        RequestMetrics(),
        RequestId(),
        ResponseHeaders(settings),
        RateLimits(settings, RateLimiter(deps.redis, settings.redis_prefix)),
        # Last, so that its response hook runs first: the after-commit hooks (the enqueue, the
        # Prefer: wait answer, the emits) finish the response before the others see it.
        SessionScope(deps.sessions, deps.autocommit),
    ])
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.keep_blank_qs_values = True
    app.resp_options.default_media_type = falcon.MEDIA_JSON
    register_error_handlers(app)
    app.add_error_handler(IntegrityError, _integrity_conflict)
    app.add_error_handler(DataError, _unstorable)
    for error in (OperationalError, SATimeoutError, redis.ConnectionError, redis.TimeoutError):
        app.add_error_handler(error, _unavailable)

    base = "/api/v1"
    comp = base + "/competitions/{slug}"
    app.add_route("/openapi.json", openapi.OpenAPIDocument())
    app.add_route("/docs", openapi.Docs())
    app.add_static_route("/docs/static", str(openapi.swagger_static_dir()))
    app.add_route("/healthz", health.Healthz())
    app.add_route("/readyz", health.Readyz(deps))
    app.add_route("/metrics", health.Metrics(deps))
    app.add_route(base + "/competitions", organiser.Competitions(deps))
    app.add_route(comp, organiser.CompetitionItem(deps))
    app.add_route(comp + "/questions", organiser.Questions(deps))
    app.add_route(comp + "/teams", manage.TeamCollection(deps))
    app.add_route(comp + "/teams/{team_id}", manage.TeamItem(deps))
    app.add_route(comp + "/teams/{team_id}/adjustments", manage.Adjustments(deps))
    app.add_route(comp + "/questions/import", manage.QuestionImport(deps))
    app.add_route(comp + "/questions/export", manage.QuestionExport(deps))
    app.add_route(comp + "/questions/{code}", manage.QuestionItem(deps))
    app.add_route(comp + "/results", manage.Results(deps))
    app.add_route(comp + "/ledger", manage.Ledger(deps))
    app.add_route(comp + "/audit", manage.AuditLog(deps))
    app.add_route(comp + "/teams/me", game.TeamMe(deps))
    app.add_route(comp + "/claims", game.Claims(deps))
    app.add_route(comp + "/claims/{code}", manage.ClaimItem(deps))
    app.add_route(comp + "/submissions", game.Submissions(deps))
    app.add_route(comp + "/mystery-boxes", game.MysteryBoxes(deps))
    app.add_route(comp + "/mystery-boxes/current", game.CurrentMysteryBox(deps))
    app.add_route(comp + "/leaderboard", game.Leaderboard(deps))
    app.add_route(base + "/jobs/{job_id:uuid}", game.JobItem(deps))
    add_pages(app, deps)
    return app
