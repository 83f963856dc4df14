"""Organiser resources for running a live event: teams, the question bank, results, audit."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
from datetime import datetime
from typing import Any

import falcon
import msgspec
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from models.kinds import ADJUST, CLAIM_RELEASE, TEAM_UPDATE
from models.live import iso
from models.tables import AuditEntry, Claim, Competition, MysteryBox, Question, ScoreEvent, Submission, Team
from web.auth import require_admin, token_hash
from web.deps import Deps
from web.errors import Problem, check_code, invalid
from web.media import read_body, read_raw, write_json
from web.resources.common import accept_job, get_competition, next_cursor, page_params
from web.resources.game import Teams, clean_name
from web.resources.organiser import audit, question_admin_view
from web.schemas import AdjustPoints, NewQuestion, QuestionPatch, TeamPatch
from web.transactions import reads, writes


def _admin(req: falcon.Request, deps: Deps, slug: str) -> tuple[Session, str, Competition]:
    session: Session = req.context.session
    actor = require_admin(req, session, deps.settings.admin_token)
    return session, actor, get_competition(session, slug)


def _team_id(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value < 2**63:
        raise Problem(falcon.HTTP_404, "team-not-found", "Team not found", f"there is no team {raw!r}")
    return value


def _get_team(session: Session, competition: Competition, team_id: int) -> Team:
    team = session.scalar(select(Team).where(Team.id == team_id, Team.competition_id == competition.id))
    if team is None:
        raise Problem(falcon.HTTP_404, "team-not-found", "Team not found", f"there is no team {team_id}")
    return team


def _csv(resp: falcon.Response, rows: list[dict[str, Any]], columns: list[str], filename: str) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    resp.content_type = "text/csv; charset=utf-8"
    resp.downloadable_as = filename
    resp.text = buffer.getvalue()


# A spreadsheet reads a cell starting with one of these as a formula (tab and CR too, in some).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """A cell that is safe to open in a spreadsheet: text that could start a formula gets a
    leading apostrophe, checked after a list is joined (its first item is the cell's start)."""
    if isinstance(value, list):
        value = "|".join(str(v) for v in value)
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _uncsv_cell(value: str) -> str:
    # The export's neutralising apostrophe, taken off again so an exported bank re-imports as it was.
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_START) else value


def _format(req: falcon.Request) -> str:
    fmt = req.get_param("format", default="json")
    if fmt not in ("json", "csv"):
        raise invalid("format", "must be json or csv", falcon.HTTP_400)
    return fmt


def standings(session: Session, competition: Competition, limit: int | None = None, offset: int = 0,
              include_disqualified: bool = True) -> list[dict[str, Any]]:
    claims = (select(func.count()).where(Claim.team_id == Team.id).correlate(Team).scalar_subquery())
    answers = (select(func.count()).where(Submission.team_id == Team.id).correlate(Team).scalar_subquery())
    correct = (select(func.count()).where(Submission.team_id == Team.id, Submission.correct)
               .correlate(Team).scalar_subquery())
    rank = func.rank().over(order_by=(Team.disqualified, Team.points.desc(), Team.points_at, Team.id))
    query = (
        select(Team, rank.label("rank"), claims.label("claims"), answers.label("answers"), correct.label("correct"))
        .where(Team.competition_id == competition.id)
        .order_by(Team.disqualified, Team.points.desc(), Team.points_at, Team.id)
        .offset(offset)
    )
    if not include_disqualified:
        query = query.where(Team.disqualified.is_(False))
    if limit is not None:
        query = query.limit(limit)
    return [
        {
            "teamId": r.Team.id,
            "teamName": r.Team.name,
            "members": r.Team.members,
            "email": r.Team.email,
            "points": r.Team.points,
            "rank": None if r.Team.disqualified else r.rank,
            "disqualified": r.Team.disqualified,
            "claims": r.claims,
            "answers": r.answers,
            "correctAnswers": r.correct,
            "deadline": iso(r.Team.deadline) if r.Team.deadline else None,
            "registeredAt": iso(r.Team.created_at),
        }
        for r in session.execute(query).all()
    ]


class TeamCollection(Teams):
    """POST registers a team (``game.Teams``); GET lists teams for organisers."""

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session, _, competition = _admin(req, self.deps, slug)
        limit, offset = page_params(req)
        items = standings(session, competition, limit, offset)
        write_json(resp, {"items": items, "nextCursor": next_cursor(offset, limit, len(items))})


class TeamItem:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str, team_id: str) -> None:
        session, _, competition = _admin(req, self.deps, slug)
        team = _get_team(session, competition, _team_id(team_id))
        row = next(r for r in standings(session, competition) if r["teamId"] == team.id)
        write_json(resp, row)

    @writes
    def on_patch(self, req: falcon.Request, resp: falcon.Response, slug: str, team_id: str) -> None:
        session, _, competition = _admin(req, self.deps, slug)
        team = _get_team(session, competition, _team_id(team_id))
        body = read_body(req, TeamPatch, self.deps.settings.max_body_bytes)
        payload: dict[str, Any] = {"teamId": team.id}
        if body.team_name is not None:
            payload["teamName"] = clean_name(body.team_name, "teamName")
        if body.disqualified is not None:
            payload["disqualified"] = body.disqualified
        # Audited by the worker, in the transaction that applies or refuses it.
        accept_job(req, resp, self.deps, competition=competition, kind=TEAM_UPDATE.name,
                   queue=TEAM_UPDATE.queue(self.deps.settings, competition.id), payload=payload,
                   owner_hash=token_hash(self.deps.settings.admin_token), team_id=team.id)


class Adjustments:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @writes
    def on_post(self, req: falcon.Request, resp: falcon.Response, slug: str, team_id: str) -> None:
        session, _, competition = _admin(req, self.deps, slug)
        team = _get_team(session, competition, _team_id(team_id))
        body = read_body(req, AdjustPoints, self.deps.settings.max_body_bytes)
        reason = " ".join(body.reason.split())
        if not reason:
            raise invalid("reason", "must not be blank")
        payload = {"teamId": team.id, "delta": body.delta, "reason": reason}
        # Audited by the worker, in the transaction that applies or refuses it.
        accept_job(req, resp, self.deps, competition=competition, kind=ADJUST.name,
                   queue=ADJUST.queue(self.deps.settings, competition.id), payload=payload,
                   owner_hash=token_hash(self.deps.settings.admin_token), team_id=team.id)


def _question_in_use(session: Session, question: Question) -> bool:
    return bool(session.scalar(select(
        exists().where(Claim.question_id == question.id)
        | exists().where(Submission.question_id == question.id)
        | exists().where(MysteryBox.question_id == question.id)
    )))


class QuestionItem:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def _get(self, session: Session, competition: Competition, code: str, lock: bool = False) -> Question:
        check_code(code)
        query = select(Question).where(Question.competition_id == competition.id, Question.code == code)
        question = session.scalar(query.with_for_update() if lock else query)
        if question is None:
            raise Problem(falcon.HTTP_404, "question-not-found", "Question not found", f"there is no question {code!r}")
        return question

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str, code: str) -> None:
        session, _, competition = _admin(req, self.deps, slug)
        question = self._get(session, competition, code)
        write_json(resp, question_admin_view(question, _question_in_use(session, question)))

    @writes
    def on_patch(self, req: falcon.Request, resp: falcon.Response, slug: str, code: str) -> None:
        session, actor, competition = _admin(req, self.deps, slug)
        question = self._get(session, competition, code, lock=True)
        body = read_body(req, QuestionPatch, self.deps.settings.max_body_bytes)
        before = question_admin_view(question)
        in_use = _question_in_use(session, question)
        if in_use and (body.answer is not None or body.kind is not None or body.points is not None):
            raise Problem(falcon.HTTP_409, "question-in-use", "Question in use",
                          f"{code!r} has been claimed or answered; its answer, points and kind are fixed")
        for attr, column in (("question", "text"), ("answer", "answer"), ("points", "points"),
                             ("options", "options"), ("difficulty", "difficulty"), ("category", "category"),
                             ("kind", "kind")):
            value = getattr(body, attr)
            if value is not None:
                setattr(question, column, value)
        session.flush()
        after = question_admin_view(question)
        audit(session, actor, "question.update", competition.id, f"question:{code}", before, after)
        write_json(resp, after)

    @writes
    def on_delete(self, req: falcon.Request, resp: falcon.Response, slug: str, code: str) -> None:
        session, actor, competition = _admin(req, self.deps, slug)
        question = self._get(session, competition, code, lock=True)
        if _question_in_use(session, question):
            raise Problem(falcon.HTTP_409, "question-in-use", "Question in use",
                          f"{code!r} has been claimed or answered and cannot be deleted")
        audit(session, actor, "question.delete", competition.id, f"question:{code}",
              question_admin_view(question), None)
        session.delete(question)
        resp.status = falcon.HTTP_204


_CSV_COLUMNS = ["questionId", "question", "answer", "points", "options", "difficulty", "category", "kind"]


def _csv_text(raw: bytes) -> str:
    """The file as text: UTF-8 (with or without a BOM) or UTF-16 with its BOM; anything else is
    refused in words a spreadsheet user can act on."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise _not_text("the file starts like UTF-16 but is not valid UTF-16") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_text(f"byte {exc.start + 1} is not UTF-8 (a Latin-1 or Windows-1252 file?)") from None
    if "\x00" in text:
        raise _not_text("the file contains NUL bytes (UTF-16 without a byte order mark?)")
    return text


def _not_text(why: str) -> Problem:
    return Problem(falcon.HTTP_400, "bad-request", "Bad request",
                   f"{why}; save the sheet as 'CSV UTF-8' and import it again",
                   errors=[{"field": "body", "message": why}])


def _rows_from_csv(raw: bytes) -> list[dict[str, Any]]:
    text = _csv_text(raw)
    # CR, LF and CRLF all end a line; newline="" lets csv see them as written.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        records = list(reader)
    except csv.Error as exc:
        row = reader.line_num
        raise Problem(falcon.HTTP_422, "validation-error", "Request validation failed",
                      f"line {row} of the CSV cannot be read: {exc}",
                      errors=[{"field": f"line {row}", "message": str(exc)}]) from None
    missing = {"questionId", "question", "answer"} - set(reader.fieldnames or [])
    if missing:
        raise Problem(falcon.HTTP_422, "validation-error", "Request validation failed",
                      f"the CSV header lacks {', '.join(sorted(missing))}",
                      errors=[{"field": "header", "message": f"missing column {m}"} for m in sorted(missing)])
    rows = []
    for record in records:
        row: dict[str, Any] = {k: _uncsv_cell(v) for k, v in record.items()
                               if isinstance(k, str) and k and isinstance(v, str) and v != ""}
        if "points" in row:
            # Non-numbers stay text, so validation names the row and the field.
            with contextlib.suppress(ValueError):
                row["points"] = int(row["points"])
        if "options" in row:
            row["options"] = [o for o in row["options"].split("|") if o]
        rows.append(row)
    return rows


class QuestionImport:
    """All-or-nothing bulk import from CSV or JSON, with a per-row error report."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @writes
    def on_post(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session, actor, competition = _admin(req, self.deps, slug)
        limit = self.deps.settings.max_body_bytes * 64
        raw = read_raw(req, limit)
        if len(raw) > limit:
            raise Problem(falcon.HTTP_413, "payload-too-large", "Payload too large",
                          f"an import may be at most {limit} bytes")
        content_type = (req.content_type or "").split(";", 1)[0].strip().lower()
        if content_type in ("text/csv", "application/csv"):
            rows = _rows_from_csv(raw)
        elif content_type == "application/json" or content_type.endswith("+json"):
            try:
                rows = msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                raise Problem(falcon.HTTP_400, "malformed-json", "Malformed JSON", str(exc)) from None
            if isinstance(rows, dict) and isinstance(rows.get("items"), list):
                rows = rows["items"]
            if not isinstance(rows, list):
                raise invalid("body", "must be a list of questions (or {\"items\": [...]})")
        else:
            raise Problem(falcon.HTTP_415, "unsupported-media-type", "Unsupported media type",
                          "send text/csv or application/json")
        if not rows:
            raise invalid("body", "the import holds no questions")
        errors: list[dict[str, str]] = []
        parsed: list[NewQuestion] = []
        seen: dict[str, int] = {}
        for i, row in enumerate(rows, start=1):
            try:
                q = msgspec.convert(row, NewQuestion)
            except msgspec.ValidationError as exc:
                errors.append({"field": f"row {i}", "message": str(exc), "row": str(i)})
                continue
            if q.question_id in seen:
                errors.append({"field": f"row {i}.questionId", "row": str(i),
                               "message": f"duplicates row {seen[q.question_id]}"})
            seen.setdefault(q.question_id, i)
            parsed.append(q)
        if seen:
            taken = set(session.scalars(select(Question.code).where(
                Question.competition_id == competition.id, Question.code.in_(seen))))
            for code in sorted(taken):
                errors.append({"field": f"row {seen[code]}.questionId", "row": str(seen[code]),
                               "message": f"question {code!r} already exists"})
        if errors:
            raise Problem(falcon.HTTP_422, "import-rejected", "Import rejected",
                          f"{len(errors)} problem(s) in {len(rows)} row(s); nothing was imported", errors=errors)
        session.add_all([
            Question(competition_id=competition.id, code=q.question_id, text=q.question, options=q.options,
                     answer=q.answer, points=q.points, difficulty=q.difficulty, category=q.category, kind=q.kind)
            for q in parsed
        ])
        session.flush()
        audit(session, actor, "questions.import", competition.id, None, None,
              {"count": len(parsed), "format": content_type})
        write_json(resp, {"imported": len(parsed), "errors": []}, falcon.HTTP_201)


class QuestionExport:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session, _, competition = _admin(req, self.deps, slug)
        fmt = _format(req)
        questions = session.scalars(
            select(Question).where(Question.competition_id == competition.id).order_by(Question.id)
        ).all()
        rows = [question_admin_view(q) for q in questions]
        if fmt == "csv":
            _csv(resp, rows, _CSV_COLUMNS, f"{slug}-questions.csv")
        else:
            write_json(resp, {"items": rows})


class Results:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session, _, competition = _admin(req, self.deps, slug)
        rows = standings(session, competition)
        if _format(req) == "csv":
            _csv(resp, rows, ["rank", "teamName", "points", "disqualified", "claims", "answers", "correctAnswers",
                              "members", "email", "teamId", "registeredAt"], f"{slug}-results.csv")
        else:
            write_json(resp, {"competition": slug, "state": competition.state, "standings": rows})


class Ledger:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session, _, competition = _admin(req, self.deps, slug)
        query = (
            select(ScoreEvent, Team.name)
            .join(Team, Team.id == ScoreEvent.team_id)
            .where(ScoreEvent.competition_id == competition.id)
            .order_by(ScoreEvent.id)
        )
        team = req.get_param("teamId")
        if team is not None:
            query = query.where(ScoreEvent.team_id == _team_id(team))
        rows = [
            {
                "teamId": e.ScoreEvent.team_id,
                "teamName": e.name,
                "delta": e.ScoreEvent.delta,
                "pointsAfter": e.ScoreEvent.points_after,
                "reason": e.ScoreEvent.reason,
                "reference": e.ScoreEvent.reference,
                "at": iso(e.ScoreEvent.created_at),
            }
            for e in session.execute(query).all()
        ]
        if _format(req) == "csv":
            _csv(resp, rows, ["at", "teamId", "teamName", "delta", "pointsAfter", "reason", "reference"],
                 f"{slug}-ledger.csv")
        else:
            write_json(resp, {"competition": slug, "items": rows})


class AuditLog:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session, _, competition = _admin(req, self.deps, slug)
        limit, offset = page_params(req)
        query = select(AuditEntry).where(AuditEntry.competition_id == competition.id)
        action = req.get_param("action")
        if action is not None:
            query = query.where(AuditEntry.action.startswith(action))
        since = req.get_param("since")
        if since is not None:
            try:
                query = query.where(AuditEntry.at >= datetime.fromisoformat(since.replace("Z", "+00:00")))
            except ValueError:
                raise invalid("since", "must be an ISO 8601 time", falcon.HTTP_400) from None
        entries = session.scalars(query.order_by(AuditEntry.id).limit(limit).offset(offset)).all()
        items = [
            {"id": e.id, "at": iso(e.at), "actor": e.actor, "action": e.action, "target": e.target,
             "before": e.before, "after": e.after, "outcome": e.outcome or "applied",
             "jobId": str(e.job_id) if e.job_id else None}
            for e in entries
        ]
        write_json(resp, {"items": items, "nextCursor": next_cursor(offset, limit, len(items))})


class ClaimItem:
    """An organiser puts a claimed, unanswered question back on the board."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @writes
    def on_delete(self, req: falcon.Request, resp: falcon.Response, slug: str, code: str) -> None:
        session, _, competition = _admin(req, self.deps, slug)
        check_code(code)
        question = session.scalar(select(Question.code).where(
            Question.competition_id == competition.id, Question.code == code, Question.kind == "board"))
        if question is None:
            raise Problem(falcon.HTTP_404, "question-not-found", "Question not found",
                          f"there is no board question {code[:64]!r}")
        # On the question's board queue, so the release is serialised with answers to it; the
        # worker audits it with its outcome.
        accept_job(req, resp, self.deps, competition=competition, kind=CLAIM_RELEASE.name,
                   queue=CLAIM_RELEASE.queue(self.deps.settings, competition.id, question),
                   payload={"questionId": question, "reason": "organiser"},
                   owner_hash=token_hash(self.deps.settings.admin_token), team_id=None)
