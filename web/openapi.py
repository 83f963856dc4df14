"""The OpenAPI 3.1 document, generated from the same msgspec types that validate requests.

Response types below are the contract the resources write; the test suite fuzzes the running
app against this document and checks every response against them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import falcon
import msgspec
from msgspec import UNSET, Meta, UnsetType

from models.kinds import KIND_NAMES
from web import schemas as s
from web.transactions import reads

# Every job kind, from the registry; a kind added there appears in the document.
JobKindName = Annotated[Literal[KIND_NAMES], Meta(description=(  # type: ignore[valid-type]
    "The job's kind; Flower lists the job's task as quiz.jobs.<kind>"))]


class Out(msgspec.Struct, rename="camel", kw_only=True):
    pass


class FieldError(Out):
    field: str
    message: str
    row: str | UnsetType = UNSET


class ProblemDetails(Out):
    type: str
    title: str
    status: int
    detail: str | UnsetType = UNSET
    errors: list[FieldError] | UnsetType = UNSET


class JobLinks(Out):
    job: str


class JobError(Out):
    code: str
    message: str


class JobAccepted(Out):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    links: JobLinks
    team_token: str | UnsetType = UNSET


class JobView(Out):
    job_id: str
    kind: JobKindName
    status: Literal["queued", "running", "succeeded", "failed"]
    created_at: Annotated[str | None, Meta(description="When the API accepted the job; deadlines are judged by it")]
    finished_at: Annotated[str | None, Meta(description=(
        "When the result became visible: the database clock at the last statement of the consumer's "
        "transaction, right before its COMMIT"))]
    links: JobLinks
    result: dict[str, Any] | UnsetType = UNSET
    error: JobError | UnsetType = UNSET
    team_token: str | UnsetType = UNSET


class Standing(Out):
    rank: int
    team_name: str
    points: int


class LeaderboardView(Out):
    competition: str
    state: str
    frozen: bool
    frozen_at: str | None
    leaderboard: list[Standing]
    next_cursor: str | None
    at: str


class BoardQuestion(Out):
    question_id: str
    points: int
    difficulty: str
    category: str | None
    claimed: bool


class AdminQuestion(Out):
    question_id: str
    question: str
    options: list[str]
    answer: str
    points: int
    difficulty: str
    category: str | None
    kind: str
    claimed: bool | UnsetType = UNSET


class QuestionItem(Out):
    """A board entry; organisers also get the text, options, answer and kind."""

    question_id: str
    points: int
    difficulty: str
    category: str | None
    claimed: bool
    question: str | UnsetType = UNSET
    options: list[str] | UnsetType = UNSET
    answer: str | UnsetType = UNSET
    kind: str | UnsetType = UNSET


class QuestionPage(Out):
    items: list[QuestionItem]
    next_cursor: str | None


class AdminQuestionList(Out):
    items: list[AdminQuestion]
    count: int | UnsetType = UNSET


class ImportResult(Out):
    imported: int
    errors: list[FieldError]


class ClaimView(Out):
    question_id: str
    points: int
    claimed_at: str
    answered: bool


class OpenBox(Out):
    mystery_question_id: str
    question: str
    options: list[str]
    difficulty: str
    potential_points: int
    deducted_points: int


class TeamMeView(Out):
    team_id: int
    team_name: str
    members: list[str]
    email: str | None
    points: int
    rank: int | None
    disqualified: bool
    deadline: str | None
    remaining_seconds: int | None
    claims: list[ClaimView]
    open_mystery_box: OpenBox | None


class TeamRow(Out):
    team_id: int
    team_name: str
    members: list[str]
    email: str | None
    points: int
    rank: int | None
    disqualified: bool
    claims: int
    answers: int
    correct_answers: int
    deadline: str | None
    registered_at: str


class TeamPage(Out):
    items: list[TeamRow]
    next_cursor: str | None


class Money(msgspec.Struct, rename="upper"):
    easy: int
    medium: int
    hard: int


class CompetitionLinks(Out):
    self: str


class CompetitionView(Out):
    slug: str
    title: str
    state: str
    starting_points: int
    max_open_claims: int
    time_limit_seconds: int | None
    wrong_answer_penalty: int
    deadline_bonus_seconds: int
    leaderboard_size: int
    mystery_prices: Money
    mystery_rewards: Money
    freeze_at: str | None
    claim_timeout_seconds: int | None
    registration_code_required: bool
    created_at: str
    links: CompetitionLinks


class CompetitionPage(Out):
    items: list[CompetitionView]
    next_cursor: str | None


class ResultsView(Out):
    competition: str
    state: str
    standings: list[TeamRow]


class LedgerRow(Out):
    team_id: int
    team_name: str
    delta: int
    points_after: int
    reason: str
    reference: str | None
    at: str


class LedgerView(Out):
    competition: str
    items: list[LedgerRow]


class AuditRow(Out):
    id: int
    at: str
    actor: str
    action: str
    target: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    # Written in the transaction that applied or refused the action.
    outcome: Literal["applied", "refused"]
    job_id: str | None


class AuditPage(Out):
    items: list[AuditRow]
    next_cursor: str | None


class QuestionExportView(Out):
    items: list[AdminQuestion]


class Health(Out):
    status: str
    checks: dict[str, str] | UnsetType = UNSET


class LiveStatusView(Out):
    competition: str
    title: str
    state: str
    frozen: bool
    freeze_at: str | None
    time_limit_seconds: int | None
    ends_at: str | None
    server_time: str


HTML = "text/html"


SLUG = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "The competition's slug", "example": "demo"}
TEAM_ID = {"name": "team_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
CODE = {"name": "code", "in": "path", "required": True, "schema": {"type": "string"}, "example": "Q1"}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
LIMIT = {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 200}, "description": "Page size"}
CURSOR = {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
          "description": "The nextCursor of the previous page"}
FORMAT = {"name": "format", "in": "query", "required": False, "schema": {"enum": ["json", "csv"]}}
PREFER = {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
          "description": "`wait=N` (N <= 10): wait up to N seconds and answer 200 with the finished job; "
                         "202 at once when the API process already has MAX_WAITERS waiting requests",
          "example": "wait=5"}
IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
               "schema": {"type": "string", "minLength": 1, "maxLength": 255},
               "description": "Retrying a write with the same key returns the original job"}

TEAM = [{"teamToken": []}]
ADMIN = [{"adminToken": []}]
PUBLIC: list[dict[str, list[str]]] = []

JOB_ERRORS = (
    "team_name_taken, registration_closed, registration_code_invalid, question_not_found, "
    "question_already_claimed, claim_limit_reached, question_not_claimed, claim_expired, already_answered, "
    "insufficient_points, no_mystery_left, mystery_already_open, no_open_mystery_box, competition_not_running, "
    "deadline_passed, team_disqualified, team_not_found"
)
NAME_RULE = (
    "Team names are NFKC-normalised with whitespace collapsed; control and format characters (Unicode Cc "
    "and Cf: zero-width characters, bidi overrides) are refused with 422. Names are unique per competition "
    "after casefolding, so look-alikes fail with team_name_taken. "
)


def _op(summary: str, tag: str, security: list[dict[str, list[str]]], ok: dict[int, tuple[str, type | None]],
        body: Any = None, params: tuple[dict[str, Any], ...] = (), example: Any = None,
        problems: tuple[int, ...] = (), description: str = "", body_media: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"summary": summary, "tag": tag, "security": security, "ok": ok, "body": body, "params": params,
            "example": example, "problems": problems, "description": description, "body_media": body_media}


WRITE_OK = {202: ("Accepted: the job is queued", JobAccepted), 200: ("The job finished within Prefer: wait", JobView)}
COMP = "/api/v1/competitions/{slug}"

OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "/healthz": {"get": _op("Process is up", "operations", PUBLIC, {200: ("Up", Health)})},
    "/readyz": {"get": _op("Database and Redis reachable", "operations", PUBLIC,
                           {200: ("Ready", Health)}, problems=(503,))},
    "/api/v1/competitions": {
        "post": _op("Create a competition", "organisers", ADMIN, {201: ("Created", CompetitionView)},
                    body=s.CreateCompetition, problems=(409,),
                    example={"slug": "demo", "title": "Friday quiz", "startingPoints": 1000, "maxOpenClaims": 1,
                             "mysteryPrices": {"EASY": 50, "MEDIUM": 100, "HARD": 150}}),
        "get": _op("List competitions", "organisers", ADMIN, {200: ("A page", CompetitionPage)},
                   params=(LIMIT, CURSOR)),
    },
    COMP: {
        "get": _op("Read a competition", "competitions", PUBLIC, {200: ("The competition", CompetitionView)},
                   params=(SLUG,)),
        "patch": _op("Change settings or state (draft -> open -> running <-> paused -> finished), freeze",
                     "organisers", ADMIN, {200: ("Updated", CompetitionView)}, body=s.UpdateCompetition,
                     params=(SLUG,), problems=(409,), example={"state": "running"}),
    },
    COMP + "/teams": {
        "post": _op("Register a team (the 202 carries the teamToken, shown once)", "teams", PUBLIC, WRITE_OK,
                    body=s.RegisterTeam, params=(SLUG, PREFER, IDEMPOTENCY), problems=(403,),
                    example={"teamName": "Owls", "members": ["Ann", "Bo"], "email": "owls@example.com"},
                    description="Job result: teamId, teamName, points, registered. " + NAME_RULE
                    + "When the competition has a registration code, a registration without the right "
                      "`registrationCode` is refused with 403 registration-code-invalid and no job is made. "
                      "A replay with the same Idempotency-Key returns the original job; it carries the "
                      "teamToken again only when the key has 128 bits or more (a UUID, or e.g. "
                      "secrets.token_urlsafe(24)). Registrations per client address are limited "
                      "(RATE_LIMIT_REGISTER_IP per RATE_LIMIT_REGISTER_WINDOW). Job errors: " + JOB_ERRORS),
        "get": _op("List teams with points, rank, claims and answers", "organisers", ADMIN,
                   {200: ("A page", TeamPage)}, params=(SLUG, LIMIT, CURSOR)),
    },
    COMP + "/teams/me": {"get": _op("The calling team", "teams", TEAM, {200: ("The team", TeamMeView)},
                                    params=(SLUG,))},
    COMP + "/teams/{team_id}": {
        "get": _op("One team", "organisers", ADMIN, {200: ("The team", TeamRow)}, params=(SLUG, TEAM_ID)),
        "patch": _op("Rename, disqualify or reinstate a team", "organisers", ADMIN, WRITE_OK, body=s.TeamPatch,
                     params=(SLUG, TEAM_ID, PREFER, IDEMPOTENCY), example={"disqualified": True},
                     description=NAME_RULE + "Disqualifying releases the team's unanswered claims "
                                 "(question_released, reason disqualified) and forfeits its open mystery box. "
                                 "Audited when the job is applied or refused."),
    },
    COMP + "/teams/{team_id}/adjustments": {
        "post": _op("Adjust a team's points, with a reason (a ledger row)", "organisers", ADMIN, WRITE_OK,
                    body=s.AdjustPoints, params=(SLUG, TEAM_ID, PREFER, IDEMPOTENCY),
                    example={"delta": -50, "reason": "late answer"}),
    },
    COMP + "/claims": {
        "post": _op("Claim a question from the board", "teams", TEAM, WRITE_OK, body=s.ClaimQuestion,
                    params=(SLUG, PREFER, IDEMPOTENCY), example={"questionId": "Q1"},
                    description="Job result: questionId, question, options, points. Job errors: " + JOB_ERRORS),
    },
    COMP + "/claims/{code}": {
        "delete": _op("Release a claim: the question goes back on the board (audited)", "organisers", ADMIN,
                      WRITE_OK, params=(SLUG, CODE, PREFER, IDEMPOTENCY),
                      description="A job on the question's board queue, so it is serialised with answers. "
                                  "Job result: questionId, teamId, teamName, reason, claimedAt, released. "
                                  "Job errors: question_not_claimed, already_answered. Spectators get "
                                  "question_released {questionId, reason: organiser}."),
    },
    COMP + "/submissions": {
        "post": _op("Answer a claimed question (or the open mystery box's question)", "teams", TEAM, WRITE_OK,
                    body=s.SubmitAnswer, params=(SLUG, PREFER, IDEMPOTENCY),
                    example={"questionId": "Q1", "answer": "42"},
                    description="Job result: correct, pointsEarned, totalPoints, rank. Job errors: " + JOB_ERRORS),
    },
    COMP + "/mystery-boxes": {
        "post": _op("Buy a mystery box (the price is the competition's, never the client's)", "teams", TEAM,
                    WRITE_OK, body=s.BuyMysteryBox, params=(SLUG, PREFER, IDEMPOTENCY),
                    example={"difficulty": "EASY"},
                    description="Job result: mysteryQuestionId, question, options, difficulty, potentialPoints, "
                                "deductedPoints. Job errors: " + JOB_ERRORS),
    },
    COMP + "/mystery-boxes/current": {
        "delete": _op("Forfeit the open mystery box (no refund)", "teams", TEAM, WRITE_OK,
                      params=(SLUG, PREFER, IDEMPOTENCY)),
    },
    COMP + "/leaderboard": {
        "get": _op("The leaderboard (frozen standings for the public while a freeze lasts)", "competitions",
                   PUBLIC, {200: ("Standings", LeaderboardView)},
                   params=(SLUG, {**LIMIT, "schema": {"type": "integer", "minimum": 1, "maximum": 500}}, CURSOR)),
    },
    COMP + "/questions": {
        "get": _op("The board (no answers); organisers get the whole bank, filterable by ?kind=", "competitions",
                   PUBLIC, {200: ("A page", QuestionPage)},
                   params=(SLUG, LIMIT, CURSOR,
                           {"name": "kind", "in": "query", "required": False, "schema": {"enum": ["board", "mystery"]}},
                           {"name": "difficulty", "in": "query", "required": False,
                            "schema": {"enum": ["EASY", "MEDIUM", "HARD"]}},
                           {"name": "category", "in": "query", "required": False, "schema": {"type": "string"}},
                           {"name": "claimed", "in": "query", "required": False, "schema": {"type": "boolean"}})),
        "post": _op("Add one question or a list of them (all or nothing)", "organisers", ADMIN,
                    {201: ("Created", (AdminQuestion, AdminQuestionList))}, body=s.NewQuestions,
                    params=(SLUG,), problems=(409,),
                    example={"questionId": "Q1", "question": "6 x 7?", "answer": "42", "points": 100,
                             "difficulty": "EASY", "kind": "board"}),
    },
    COMP + "/questions/import": {
        "post": _op("Bulk import from CSV or JSON: every row validated first, all or nothing", "organisers",
                    ADMIN, {201: ("Imported", ImportResult)}, body=list[s.NewQuestion], params=(SLUG,),
                    body_media=("text/csv",),
                    example=[{"questionId": "Q1", "question": "6 x 7?", "answer": "42", "points": 100},
                             {"questionId": "M1", "question": "12 squared?", "answer": "144", "points": 0,
                              "kind": "mystery", "difficulty": "EASY"}]),
    },
    COMP + "/questions/export": {
        "get": _op("Export the question bank", "organisers", ADMIN, {200: ("The bank", QuestionExportView)},
                   params=(SLUG, FORMAT)),
    },
    COMP + "/questions/{code}": {
        "get": _op("One question", "organisers", ADMIN, {200: ("The question", AdminQuestion)},
                   params=(SLUG, CODE)),
        "patch": _op("Edit a question (answer, points, kind fixed once claimed or answered)", "organisers",
                     ADMIN, {200: ("Updated", AdminQuestion)}, body=s.QuestionPatch, params=(SLUG, CODE),
                     problems=(409,), example={"question": "What is 6 x 7?", "category": "maths"}),
        "delete": _op("Delete an unused question", "organisers", ADMIN, {204: ("Deleted", None)},
                      params=(SLUG, CODE), problems=(409,)),
    },
    COMP + "/results": {"get": _op("Final standings (JSON or CSV)", "organisers", ADMIN,
                                   {200: ("Standings", ResultsView)}, params=(SLUG, FORMAT))},
    COMP + "/ledger": {"get": _op("Every points change (JSON or CSV)", "organisers", ADMIN,
                                  {200: ("The ledger", LedgerView)},
                                  params=(SLUG, FORMAT, {"name": "teamId", "in": "query", "required": False,
                                                         "schema": {"type": "integer"}}))},
    COMP + "/audit": {"get": _op("The audit log of organiser actions", "organisers", ADMIN,
                                 {200: ("A page", AuditPage)},
                                 params=(SLUG, LIMIT, CURSOR,
                                         {"name": "action", "in": "query", "required": False,
                                          "schema": {"type": "string"}},
                                         {"name": "since", "in": "query", "required": False,
                                          "schema": {"type": "string", "format": "date-time"}}))},
    "/api/v1/jobs/{job_id}": {"get": _op("A job (its owner or an organiser)", "jobs", [*TEAM, *ADMIN],
                                         {200: ("The job", JobView)}, params=(JOB_ID,))},
    "/live/{slug}": {"get": _op(
        "The projector page: live leaderboard, ticker, state, countdown and freeze", "pages", PUBLIC,
        {200: ("An HTML page", HTML)},
        params=(SLUG, {"name": "theme", "in": "query", "required": False, "schema": {"enum": ["dark", "light"]}},
                {**LIMIT, "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                 "description": "Rows shown (default: the competition's leaderboard size)"}))},
    "/live/{slug}/status": {"get": _op(
        "What the projector polls: state, freeze, when the last team's time runs out, the server's clock",
        "pages", PUBLIC, {200: ("The status", LiveStatusView)}, params=(SLUG,))},
    "/play/{slug}": {"get": _op(
        "The team page: register, the board, claim and answer, mystery boxes", "pages", PUBLIC,
        {200: ("An HTML page", HTML)},
        params=(SLUG, {"name": "theme", "in": "query", "required": False, "schema": {"enum": ["dark", "light"]}}))},
}

_PROBLEM_TEXT = {
    400: "Malformed JSON, bad query parameter or header, or a file that is not UTF-8/UTF-16 text",
    401: "Missing or invalid bearer token",
    403: "The token may not do this (or, on registration, registration-code-invalid)",
    404: "Unknown competition, resource or route",
    405: "Method not allowed",
    409: "Conflicts with the current state",
    413: "Body over the size limit",
    414: "Request line (path and query string) over the server's limit of 4,094 bytes",
    415: "Body is not JSON (or CSV for imports)",
    422: "The body failed validation; errors[] names each field",
    429: "Rate limited (writes, reads or registrations); see Retry-After",
    503: "Database or Redis unreachable; see Retry-After",
}


def build_spec() -> dict[str, Any]:
    types: list[Any] = [ProblemDetails]
    for path_ops in OPERATIONS.values():
        for op in path_ops.values():
            if op["body"] is not None:
                types.append(op["body"])
            for _, t in op["ok"].values():
                types.extend(t if isinstance(t, tuple) else [t] if t is not None and t != HTML else [])
    schemas_out, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    by_id = dict(zip(map(id, types), schemas_out, strict=False))

    def schema_of(t: Any) -> dict[str, Any]:
        if isinstance(t, tuple):
            return {"oneOf": [by_id[id(x)] for x in t]}
        return by_id[id(t)]

    problem_ref = schema_of(ProblemDetails)

    paths: dict[str, Any] = {}
    for path, path_ops in OPERATIONS.items():
        paths[path] = {}
        for method, op in path_ops.items():
            responses: dict[str, Any] = {}
            for status, (text, type_) in sorted(op["ok"].items()):
                entry: dict[str, Any] = {"description": text}
                if type_ == HTML:
                    entry["content"] = {HTML: {"schema": {"type": "string"}}}
                elif type_ is not None:
                    entry["content"] = {"application/json": {"schema": schema_of(type_)}}
                    if FORMAT in op["params"]:
                        entry["content"]["text/csv"] = {"schema": {"type": "string"}}
                    if status == 202:
                        entry["headers"] = {"Location": {"schema": {"type": "string"},
                                                         "description": "The job's URL"}}
                responses[str(status)] = entry
            # 414 comes from gunicorn itself, before any route: every operation can answer it.
            statuses = {400, 404, 405, 414, 503} | set(op["problems"])
            if op["body"] is not None:
                statuses |= {413, 415, 422}
            if IDEMPOTENCY in op["params"]:
                statuses.add(422)
            if op["security"]:
                statuses |= {401, 403}
            if path not in ("/healthz", "/readyz"):
                # Writes and reads are rate-limited alike (reads with limits of their own).
                statuses.add(429)
            for status in sorted(statuses):
                responses[str(status)] = {
                    "description": _PROBLEM_TEXT[status],
                    "content": {"application/problem+json": {"schema": problem_ref}},
                }
            operation: dict[str, Any] = {
                "summary": op["summary"],
                "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
                "tags": [op["tag"]],
                "parameters": list(op["params"]),
                "responses": responses,
                "security": op["security"],
            }
            if op["description"]:
                operation["description"] = op["description"]
            if op["body"] is not None:
                media: dict[str, Any] = {"schema": schema_of(op["body"])}
                if op["example"] is not None:
                    media["example"] = op["example"]
                content = {"application/json": media}
                for extra in op["body_media"]:
                    content[extra] = {"schema": {"type": "string"}}
                operation["requestBody"] = {"required": True, "content": content}
            paths[path][method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Quiz competition API",
            "version": "1.0.0",
            "description": "Teams register, claim questions, answer them and buy mystery boxes; every write is a "
                           "job (202 + Location, or 200 with `Prefer: wait=N`). Errors are RFC 9457 "
                           "problem+json. Live events are on the Socket.IO server.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": n} for n in ("teams", "competitions", "jobs", "organisers", "operations", "pages")],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "teamToken": {"type": "http", "scheme": "bearer",
                              "description": "The teamToken from the registration's 202"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"},
            },
        },
    }


_DOCS = """<!doctype html>
<html><head><meta charset="utf-8"><title>Quiz competition API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div><script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui", deepLinking: true});</script>
</body></html>"""


class OpenAPIDocument:
    def __init__(self) -> None:
        self.spec = msgspec.json.encode(build_spec())

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/json"
        resp.data = self.spec


class Docs:
    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/html; charset=utf-8"
        resp.text = _DOCS
        # The page runs the bundled Swagger UI script and nothing from elsewhere.
        resp.set_header("Content-Security-Policy",
                        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                        "img-src 'self' data:")


def swagger_static_dir() -> Path:
    import swagger_ui

    return Path(swagger_ui.__file__).resolve().parent / "static"


