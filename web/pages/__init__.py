"""The projector page (``/live/{slug}``) and the team page (``/play/{slug}``).

Plain HTML, CSS and scripts from ``static/``, with the Socket.IO client vendored beside them:
no CDN and no build step, so the pages work on a venue LAN with no internet. The server renders
each page's settings (competition, realtime URL, limit, theme) into a JSON data block; the
scripts do the rest against the public API and the realtime server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from string import Template
from typing import Any

import falcon
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.live import iso, utcnow
from models.ranking import is_frozen
from models.tables import Competition, Team
from settings import Settings
from web.deps import Deps
from web.errors import invalid
from web.media import write_json
from web.resources.common import get_competition
from web.transactions import reads

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_ROUTE = "/static"
THEMES = ("dark", "light")
MAX_LIMIT = 500
_TEMPLATES = Path(__file__).resolve().parent / "templates"
# A host name, an IPv4 address or an IPv6 address: what may go into the realtime URL and the
# Content-Security-Policy. Anything else in a Host header is refused rather than echoed. Labels
# are separated by a required dot, so a long bad name cannot make the match backtrack for ages.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*\.?|[0-9A-Fa-f:.]+)$")


def _template(name: str) -> Template:
    return Template((_TEMPLATES / name).read_text(encoding="utf-8"))


def realtime_url(req: falcon.Request, settings: Settings) -> str:
    """The realtime server as the browser reaches it: the host the page was loaded from, on
    the realtime port, so a phone on the venue LAN that opened http://10.0.0.5:8000/play/x
    connects to 10.0.0.5 and not to a loopback address it cannot reach."""
    host = req.host
    if not host or len(host) > 253 or not _HOST.match(host):
        raise invalid("Host", "is not a valid host name", falcon.HTTP_400)
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if req.scheme == "https" else "http"
    return f"{scheme}://{host}:{settings.realtime_port}"


def _csp(realtime: str) -> str:
    socket = realtime.replace("http", "ws", 1)
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' {realtime} {socket}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def _config_block(config: dict[str, Any]) -> str:
    # JSON inside <script type="application/json">: escape what could close the element.
    text = json.dumps(config, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#x27;"))


def _theme(req: falcon.Request, default: str) -> str:
    theme = req.get_param("theme")
    if theme is None:
        return default
    if theme not in THEMES:
        raise invalid("theme", f"must be one of {', '.join(THEMES)}", falcon.HTTP_400)
    return theme


def _limit(req: falcon.Request, default: int) -> int:
    raw = req.get_param("limit")
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise invalid("limit", f"must be an integer from 1 to {MAX_LIMIT}", falcon.HTTP_400)
    return int(raw)


def _render(resp: falcon.Response, template: Template, realtime: str, config: dict[str, Any], title: str,
            theme: str) -> None:
    resp.content_type = "text/html; charset=utf-8"
    resp.text = template.substitute(title=_escape(title), theme=theme, config=_config_block(config))
    resp.set_header("Content-Security-Policy", _csp(realtime))


class LivePage:
    """The projector: the top N, a ticker, the state, the countdown and the freeze."""

    def __init__(self, deps: Deps) -> None:
        self.settings = deps.settings
        self.template = _template("live.html")

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        competition = get_competition(req.context.session, slug)
        theme = _theme(req, "dark")
        limit = _limit(req, competition.leaderboard_size)
        realtime = realtime_url(req, self.settings)
        config = {
            "competition": competition.slug,
            "title": competition.title,
            "realtimeUrl": realtime,
            "limit": limit,
            "leaderboardSize": competition.leaderboard_size,
            "status": f"/live/{competition.slug}/status",
        }
        _render(resp, self.template, realtime, config, competition.title, theme)


class LiveStatus:
    """What the projector polls beside its events: the state, the freeze and the clock.

    A freeze sends no event to spectators (their standings simply stop moving), and the
    countdown needs the server's clock, so the page asks every few seconds.
    """

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        session: Session = req.context.session
        competition = get_competition(session, slug)
        write_json(resp, status_view(session, competition))


def status_view(session: Session, competition: Competition) -> dict[str, Any]:
    now = utcnow()
    ends_at = None
    if competition.time_limit_seconds:
        # Each team's time starts at its registration; play is over when the last one's ends.
        ends_at = session.scalar(select(func.max(Team.deadline)).where(
            Team.competition_id == competition.id, Team.disqualified.is_(False)))
    frozen = is_frozen(competition.freeze_at, now)
    return {
        "competition": competition.slug,
        "title": competition.title,
        "state": competition.state,
        "frozen": frozen,
        "freezeAt": iso(competition.freeze_at) if competition.freeze_at else None,
        "timeLimitSeconds": competition.time_limit_seconds,
        "endsAt": iso(ends_at) if ends_at else None,
        "serverTime": iso(now),
    }


class PlayPage:
    """The team page: register, the board, claim and answer, mystery boxes, points and time."""

    def __init__(self, deps: Deps) -> None:
        self.settings = deps.settings
        self.template = _template("play.html")

    @reads
    def on_get(self, req: falcon.Request, resp: falcon.Response, slug: str) -> None:
        competition = get_competition(req.context.session, slug)
        theme = _theme(req, "light")
        realtime = realtime_url(req, self.settings)
        config = {
            "competition": competition.slug,
            "title": competition.title,
            "realtimeUrl": realtime,
            "api": f"/api/v1/competitions/{competition.slug}",
        }
        _render(resp, self.template, realtime, config, competition.title, theme)


def add_routes(app: falcon.App, deps: Deps) -> None:
    app.add_route("/live/{slug}", LivePage(deps))
    app.add_route("/live/{slug}/status", LiveStatus())
    app.add_route("/play/{slug}", PlayPage(deps))
    app.add_static_route(STATIC_ROUTE, str(STATIC_DIR))
