"""Bearer tokens: teams hold a random token (only its sha256 is stored), organisers the
admin token. Comparisons are constant-time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
from typing import Any, NamedTuple

import falcon
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from models.tables import Competition, Team
from settings import Settings
from web.errors import Problem, check_slug, competition_not_found

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="quiz"'}


def new_token_seed() -> bytes:
    return secrets.token_bytes(32)


def team_token(settings: Settings, seed: bytes) -> str:
    """A team's token: 256 bits signed from a random seed the server drew (never from the request),
    so the token can be given again to the client that replays its registration."""
    digest = hmac.new(settings.secret_key.encode(), b"team-token|" + seed, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


_HEX = frozenset("0123456789abcdefABCDEF")
MIN_REPLAY_KEY_BITS = 128


def key_entropy_bits(key: str) -> float:
    """A generous upper bound on the entropy of an Idempotency-Key, from its length and the
    character classes it uses: 4 bits per hex digit (a UUID's hyphens not counted), else log2 of
    the alphabet the classes present span (lower 26, upper 26, digits 10, each other character 1). A key of
    few distinct characters ("aaaa...", "1212...") counts as none."""
    if len(set(key)) < 8:
        return 0.0
    hex_body = key.replace("-", "")
    if set(hex_body) <= _HEX:
        return 4.0 * len(hex_body)
    alphabet = (26 * any(c.islower() for c in key) + 26 * any(c.isupper() for c in key)
                + 10 * any(c.isdigit() for c in key) + len({c for c in key if not c.isalnum()}))
    return math.log2(max(alphabet, 2)) * len(key)


def replay_may_see_token(key: str | None) -> bool:
    """Only a key nobody could guess proves the replay comes from the client that registered."""
    return key is not None and key_entropy_bits(key) >= MIN_REPLAY_KEY_BITS


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def bearer(req: falcon.Request) -> str | None:
    header = req.get_header("Authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Problem(falcon.HTTP_401, "unauthorized", "Authentication required",
                      "the Authorization header must be 'Bearer <token>'", headers=_CHALLENGE)
    return value.strip()


def is_admin(token: str | None, admin_token: str) -> bool:
    return token is not None and hmac.compare_digest(token.encode(), admin_token.encode())


def require_admin(req: falcon.Request, session: Session, admin_token: str) -> str:
    token = bearer(req)
    if token is None:
        raise Problem(falcon.HTTP_401, "unauthorized", "Authentication required",
                      "this endpoint needs the organiser token as a Bearer token", headers=_CHALLENGE)
    if is_admin(token, admin_token):
        return "admin"
    if session.scalar(select(Team.id).where(Team.token_hash == token_hash(token))) is not None:
        raise Problem(falcon.HTTP_403, "forbidden", "Forbidden", "this endpoint is for organisers only")
    raise Problem(falcon.HTTP_401, "unauthorized", "Authentication required", "the token is not valid",
                  headers=_CHALLENGE)


class CompetitionRef(NamedTuple):
    """What a team's write needs of its competition: the id (its queue, its job row)."""

    id: int


class TeamRef(NamedTuple):
    """What a team's write needs of the team: no ORM entity, whose loading costs more than the query."""

    id: int
    competition_id: int
    token_hash: bytes


# Built once: constructing them on every request cost more CPU than running them.
_COMPETITION_AND_TEAM = (
    select(Competition, Team)
    .outerjoin(Team, Team.token_hash == bindparam("digest"))
    .where(Competition.slug == bindparam("slug"))
)
_WRITER = (
    select(Competition.id, Team.id, Team.competition_id, Team.token_hash)
    .outerjoin(Team, Team.token_hash == bindparam("digest"))
    .where(Competition.slug == bindparam("slug"))
)


def _caller(req: falcon.Request, session: Session, slug: str, statement: Any) -> tuple[str | None, Any]:
    check_slug(slug)
    token = bearer(req)
    digest = token_hash(token) if token else b""
    row = session.execute(statement, {"digest": digest, "slug": slug}).first()
    if row is None:
        raise competition_not_found(slug)
    return token, row


def _refuse_caller(token: str | None, team_found: bool, same_competition: bool) -> None:
    if token is None:
        raise Problem(falcon.HTTP_401, "unauthorized", "Authentication required",
                      "this endpoint needs the teamToken from registration as a Bearer token",
                      headers=_CHALLENGE)
    if not team_found:
        raise Problem(falcon.HTTP_401, "unauthorized", "Authentication required",
                      "the token is not valid (a new registration may still be in progress)",
                      headers=_CHALLENGE)
    if not same_competition:
        raise Problem(falcon.HTTP_403, "forbidden", "Forbidden", "the token belongs to another competition")


def competition_and_team(req: falcon.Request, session: Session, slug: str) -> tuple[Competition, Team]:
    """The competition and the calling team, in one query."""
    token, (competition, team) = _caller(req, session, slug, _COMPETITION_AND_TEAM)
    _refuse_caller(token, team is not None, team is not None and team.competition_id == competition.id)
    return competition, team


def writer(req: falcon.Request, session: Session, slug: str) -> tuple[CompetitionRef, TeamRef]:
    """The competition and the calling team of a team's write (the hot path of a live round), in one
    query of four columns; the same refusals as ``competition_and_team``."""
    token, (competition_id, team_id, team_competition, digest) = _caller(req, session, slug, _WRITER)
    _refuse_caller(token, team_id is not None, team_competition == competition_id)
    return CompetitionRef(competition_id), TeamRef(team_id, team_competition, digest)
