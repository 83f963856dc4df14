"""Organiser resources: competitions, their state, and the question bank."""

from __future__ import annotations

import functools
from typing import Any

import falcon
import msgspec
from sqlalchemy import exists, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models import events
from models.live import competition_room, iso, organisers_room, utcnow
from models.tables import AuditEntry, Claim, Competition, MysteryBox, Question
from web.auth import bearer, is_admin, require_admin
from web.deps import Deps
from web.errors import Problem, invalid
from web.media import read_body, write_json
from web.resources.common import get_competition, next_cursor, page_params
from web.resources.game import board_view
from web.schemas import CompetitionSettings, CreateCompetition, NewQuestion, NewQuestions, UpdateCompetition
from web.transactions import after_commit, reads, writes

TRANSITIONS: dict[str, tuple[str, ...]] = {
    "draft": ("open",),
    "open": ("running", "finished"),
    "running": ("paused", "finished"),
    "paused": ("running", "finished"),
    "finished": (),
}

_SETTINGS = {
    "title": "title",
    "starting_points": "starting_points",
    "max_open_claims": "max_open_claims",
    "time_limit_seconds": "time_limit_seconds",
    "wrong_answer_penalty": "wrong_answer_penalty",
    "deadline_bonus_seconds": "deadline_bonus_seconds",
    "leaderboard_size": "leaderboard_size",
}


def competition_view(c: Competition) -> dict[str, Any]:
    return {
        "slug": c.slug,
        "title": c.title,
        "state": c.state,
        "startingPoints": c.starting_points,
        "maxOpenClaims": c.max_open_claims,
        "timeLimitSeconds": c.time_limit_seconds,
        "wrongAnswerPenalty": c.wrong_answer_penalty,
        "deadlineBonusSeconds": c.deadline_bonus_seconds,
        "leaderboardSize": c.leaderboard_size,
        "mysteryPrices": {d: c.mystery_price(d) for d in ("EASY", "MEDIUM", "HARD")},
        "mysteryRewards": {d: c.mystery_reward(d) for d in ("EASY", "MEDIUM", "HARD")},
        "freezeAt": iso(c.freeze_at) if c.freeze_at else None,
        "claimTimeoutSeconds": c.claim_timeout_seconds,
        # The code itself is never shown: the public reads this view too.
        "registrationCodeRequired": c.registration_code is not None,
        "createdAt": iso(c.created_at),
        "links": {"self": f"/api/v1/competitions/{c.slug}"},
    }


def apply_settings(c: Competition, body: CompetitionSettings) -> None:
    for attr, column in _SETTINGS.items():
        value = getattr(body, attr)
        if value is not None:
            setattr(c, column, value)
    # These two take null for "none", so absence is UNSET.
    if body.claim_timeout_seconds is not msgspec.UNSET:
        c.claim_timeout_seconds = body.claim_timeout_seconds
    if body.registration_code is not msgspec.UNSET:
        c.registration_code = body.registration_code
    for prefix, per in (("price", body.mystery_prices), ("reward", body.mystery_rewards)):
        if per is None:
            continue
        for difficulty in ("easy", "medium", "hard"):
            value = getattr(per, difficulty)
            if value is not None:
                setattr(c, f"{prefix}_{difficulty}", value)


def audit(session: Session, actor: str, action: str, competition_id: int | None, target: str | None,
          before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    # In the request's transaction, with the change it records: committed together or not at all.
    session.add(AuditEntry(competition_id=competition_id, actor=actor, action=action, target=target,
                           before=before, after=after, outcome="applied"))


class Competitions:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @writes
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        session: Session = req.context.session
        actor = require_admin(req, session, self.deps.settings.admin_token)
        body = read_body(req, CreateCompetition, self.deps.settings.max_body_bytes)
        created = session.scalar(
            pg_insert(Competition).values(slug=body.slug, title=body.title).on_conflict_do_nothing()
            .returning(Competition.id)
        )
        if created is None:
            raise Problem(falcon.HTTP_409, "competition-exists", "Competition exists",
                          f"a competition with slug {body.slug!r} already exists")
        competition = session.get(Competition, created)
        assert competition is not None
        apply_settings(competition, body)
        session.flush()
        session.refresh(competition)
        view = competition_view(competition)
        audit(session, actor, "competition.create", competition.id, competition.slug, None, view)
        resp.location = f"/api/v1/competitions/{competition.slug}"
        write_json(resp, view, falcon.HTTP_201)

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        session: Session = req.context.session
        require_admin(req, session, self.deps.settings.admin_token)
        limit, offset = page_params(req)
        rows = session.scalars(select(Competition).order_by(Competition.id).limit(limit).offset(offset)).all()
        write_json(resp, {"items": [competition_view(c) for c in rows],
                          "nextCursor": next_cursor(offset, limit, len(rows))})


class CompetitionItem:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        write_json(resp, competition_view(get_competition(req.context.session, slug)))

    @writes
    def on_patch(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session: Session = req.context.session
        actor = require_admin(req, session, self.deps.settings.admin_token)
        body = read_body(req, UpdateCompetition, self.deps.settings.max_body_bytes)
        competition = session.scalar(select(Competition).where(Competition.slug == slug).with_for_update())
        if competition is None:
            get_competition(session, slug)
        assert competition is not None
        before = competition_view(competition)
        old_state = competition.state
        if body.state is not None and body.state != competition.state:
            allowed = TRANSITIONS[competition.state]
            if body.state not in allowed:
                raise Problem(
                    falcon.HTTP_409, "illegal-transition", "Illegal state transition",
                    f"a {competition.state} competition can go to {', '.join(allowed) or 'nothing'}, "
                    f"not {body.state}",
                    extra={"state": competition.state, "allowed": list(allowed)},
                )
            competition.state = body.state
        apply_settings(competition, body)
        now = utcnow()
        if body.freeze is not None:
            competition.freeze_at = now if body.freeze else None
        elif body.freeze_at is not msgspec.UNSET:
            competition.freeze_at = body.freeze_at
        competition.updated_at = now
        session.flush()
        after = competition_view(competition)
        audit(session, actor, "competition.update", competition.id, slug, before, after)
        stamp = iso(now)
        if competition.state != old_state:
            changed = events.CompetitionState(competition=slug, at=stamp, state=competition.state)
            after_commit(req, functools.partial(events.emit, self.deps.sio, changed,
                                                room=[competition_room(slug), organisers_room(slug)]))
        # Realtime servers cache competition settings; tell them what changed.
        after_commit(req, functools.partial(self.deps.live.publish_change, events.CompetitionSettings(
            competition=slug,
            competition_id=competition.id,
            at=stamp,
            state=competition.state,
            leaderboard_size=competition.leaderboard_size,
            freeze_at=iso(competition.freeze_at) if competition.freeze_at else None,
        )))
        write_json(resp, after)


def _choice(req: falcon.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = req.get_param(name)
    if value is None:
        return None
    if value not in allowed:
        raise invalid(name, f"must be one of {', '.join(allowed)}", falcon.HTTP_400)
    return value


def question_filters(req: falcon.Request) -> list[Any]:
    """The bank's filters (kind, difficulty, category, claimed), validated for every caller."""
    filters: list[Any] = []
    kind = _choice(req, "kind", ("board", "mystery"))
    if kind is not None:
        filters.append(Question.kind == kind)
    difficulty = _choice(req, "difficulty", ("EASY", "MEDIUM", "HARD"))
    if difficulty is not None:
        filters.append(Question.difficulty == difficulty)
    category = req.get_param("category")
    if category is not None:
        filters.append(Question.category == category)
    claimed = _choice(req, "claimed", ("true", "false"))
    if claimed is not None:
        # For mystery questions "claimed" means held by a box or answered.
        held = exists().where(Claim.question_id == Question.id) | exists().where(
            MysteryBox.question_id == Question.id, MysteryBox.state != "forfeited")
        filters.append(held if claimed == "true" else ~held)
    return filters


def question_admin_view(q: Question, claimed: bool | None = None) -> dict[str, Any]:
    view = {
        "questionId": q.code,
        "question": q.text,
        "options": q.options,
        "answer": q.answer,
        "points": q.points,
        "difficulty": q.difficulty,
        "category": q.category,
        "kind": q.kind,
    }
    if claimed is not None:
        view["claimed"] = claimed
    return view


class Questions:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session: Session = req.context.session
        competition = get_competition(session, slug)
        limit, offset = page_params(req)
        filters = question_filters(req)
        held = exists().where(Claim.question_id == Question.id) | exists().where(
            MysteryBox.question_id == Question.id, MysteryBox.state != "forfeited")
        query = select(Question, held.label("claimed")).where(Question.competition_id == competition.id, *filters)
        organiser = is_admin(bearer(req), self.deps.settings.admin_token)
        if not organiser:
            # The public board: board questions only, never their text or answers.
            query = query.where(Question.kind == "board")
        rows = session.execute(query.order_by(Question.id).limit(limit).offset(offset)).all()
        view = question_admin_view if organiser else board_view
        items = [view(r.Question, r.claimed) for r in rows]
        write_json(resp, {"items": items, "nextCursor": next_cursor(offset, limit, len(items))})

    @writes
    def on_post(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session: Session = req.context.session
        actor = require_admin(req, session, self.deps.settings.admin_token)
        competition = get_competition(session, slug)
        body = read_body(req, NewQuestions, self.deps.settings.max_body_bytes * 16)
        batch: list[NewQuestion] = body if isinstance(body, list) else [body]
        if not batch:
            raise Problem(falcon.HTTP_422, "validation-error", "Request validation failed",
                          "send at least one question", errors=[{"field": "body", "message": "empty list"}])
        seen: dict[str, int] = {}
        errors = []
        for i, q in enumerate(batch):
            where = f"[{i}].questionId" if isinstance(body, list) else "questionId"
            if q.question_id in seen:
                errors.append({"field": where, "message": f"duplicates item {seen[q.question_id]}"})
            seen[q.question_id] = i
        existing = set(session.scalars(
            select(Question.code).where(Question.competition_id == competition.id, Question.code.in_(seen))
        ))
        for i, q in enumerate(batch):
            if q.question_id in existing:
                where = f"[{i}].questionId" if isinstance(body, list) else "questionId"
                errors.append({"field": where, "message": f"question {q.question_id!r} already exists"})
        if errors:
            raise Problem(falcon.HTTP_409, "question-exists", "Question exists",
                          "nothing was imported; fix the listed items", errors=errors)
        created = [
            Question(competition_id=competition.id, code=q.question_id, text=q.question, options=q.options,
                     answer=q.answer, points=q.points, difficulty=q.difficulty, category=q.category, kind=q.kind)
            for q in batch
        ]
        session.add_all(created)
        session.flush()
        views = [question_admin_view(q) for q in created]
        audit(session, actor, "questions.create", competition.id, ",".join(seen)[:500], None,
              {"count": len(created), "questionIds": list(seen)[:100]})
        if isinstance(body, list):
            write_json(resp, {"items": views, "count": len(views)}, falcon.HTTP_201)
        else:
            resp.location = f"/api/v1/competitions/{slug}/questions/{created[0].code}"
            write_json(resp, views[0], falcon.HTTP_201)
