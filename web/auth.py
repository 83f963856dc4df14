"""Bearer tokens: teams hold a random token (only its sha256 is stored), organisers the
admin token. Comparisons are constant-time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import falcon
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from models.tables import Competition, Team
from settings import Settings
from web.errors import Problem

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="quiz"'}


def new_token() -> str:
    return secrets.token_urlsafe(32)


def registration_token(settings: Settings, slug: str, key: str) -> str:
    secret = (settings.secret_key or settings.admin_token).encode()
    digest = hmac.new(secret, f"register|{slug}|{key}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


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


# Built once: constructing it on every request cost more CPU than running it.
_COMPETITION_AND_TEAM = (
    select(Competition, Team)
    .outerjoin(Team, Team.token_hash == bindparam("digest"))
    .where(Competition.slug == bindparam("slug"))
)


def competition_and_team(req: falcon.Request, session: Session, slug: str) -> tuple[Competition, Team]:
    """The competition and the calling team, in one query (the hot path of every team write)."""
    token = bearer(req)
    digest = token_hash(token) if token else b""
    row = session.execute(_COMPETITION_AND_TEAM, {"digest": digest, "slug": slug}).first()
    if row is None:
        raise Problem(falcon.HTTP_404, "competition-not-found", "Competition not found",
                      f"there is no competition {slug!r}")
    competition, team = row
    if token is None:
        raise Problem(falcon.HTTP_401, "unauthorized", "Authentication required",
                      "this endpoint needs the teamToken from registration as a Bearer token",
                      headers=_CHALLENGE)
    if team is None:
        raise Problem(falcon.HTTP_401, "unauthorized", "Authentication required",
                      "the token is not valid (a new registration may still be in progress)",
                      headers=_CHALLENGE)
    if team.competition_id != competition.id:
        raise Problem(falcon.HTTP_403, "forbidden", "Forbidden", "the token belongs to another competition")
    return competition, team
