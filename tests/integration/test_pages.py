"""The projector (/live) and team (/play) pages in a real browser, and the official JavaScript
Socket.IO client against the realtime server.

Debian's chromium, driven by playwright through ``executable_path`` (playwright never downloads
a browser here); `.ci/run` installs chromium and the npm client. Everything runs against the
session's real stack: API, workers and realtime.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import expect as see

from tests.support import REPO, Api, Listener, Stack, answer_of, expect, ok_job, questions, unique

JS_DIR = REPO / "tests" / "js"
# What the machine's closed network needs: no first-run, sync or update traffic (it would be
# refused, many connections at a time), and no sandbox, as CI runs as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
PROJECTOR = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 844}


def _program(name: str, hint: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed ({hint}); .ci/run installs it")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = os.environ.get("CHROMIUM") or _program("chromium", "apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def open_page(browser: Browser, stack: Stack) -> Iterator[Callable[..., Page]]:
    """Open a page of the app in a fresh browser context; fails the test on any script error
    and on any request to somewhere other than the app and its realtime server (no CDN)."""
    contexts = []
    errors: list[str] = []
    ours = (stack.api_url + "/", stack.realtime_url + "/", stack.realtime_url.replace("http", "ws", 1) + "/",
            "data:")
    elsewhere: list[str] = []

    def open_(path: str, viewport: dict[str, int], **options: Any) -> Page:
        context = browser.new_context(viewport=viewport, locale="en-GB", timezone_id="UTC", **options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: None if r.url.startswith(ours) else elsewhere.append(r.url))
        page.on("websocket", lambda w: None if w.url.startswith(ours) else elsewhere.append(w.url))
        page.goto(stack.api_url + path)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == []
    assert elsewhere == []


def row_points(page: Page, team: str) -> str | None:
    return page.locator(f'li.row[data-team="{team}"]').get_attribute("data-points", timeout=15_000)


def options_with(code: str) -> list[str]:
    return ["twelve", answer_of(code), "a hundred"]


def with_options(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**q, "options": options_with(q["questionId"])} for q in items]


# -- the pages over HTTP ---------------------------------------------------------------------


def _config(html: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="config">(.*?)</script>', html, re.S)
    assert match, html[:500]
    return json.loads(match.group(1))


def test_pages_take_the_realtime_url_from_the_host_they_were_loaded_from(api: Api, stack: Stack,
                                                                        competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    port = stack.settings.realtime_port
    for host, seen in (("quiz-hall.lan:8000", "quiz-hall.lan"), ("10.20.30.40", "10.20.30.40"),
                       ("[fe80::1]:8000", "[fe80::1]")):
        for path in (f"/live/{slug}", f"/play/{slug}"):
            resp = requests.get(stack.api_url + path, headers={"Host": host}, timeout=10)
            expect(resp, 200)
            assert resp.headers["Content-Type"].startswith("text/html")
            assert _config(resp.text)["realtimeUrl"] == f"http://{seen}:{port}"
            csp = resp.headers["Content-Security-Policy"]
            assert f"connect-src 'self' http://{seen}:{port} ws://{seen}:{port};" in csp
            assert "script-src 'self';" in csp and "unsafe-inline" not in csp
    # The second would take a backtracking pattern hours; the request's timeout would fail it.
    for host in ("evil_host!:8000", "a" * 60 + "!"):
        bad = requests.get(stack.api_url + f"/live/{slug}", headers={"Host": host}, timeout=10)
        expect(bad, 400)
        assert bad.json()["errors"][0]["field"] == "Host"


def test_page_parameters_are_checked_and_named(api: Api, competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    page = api.request("GET", f"/live/{slug}", params={"limit": "25", "theme": "light"})
    expect(page, 200)
    assert _config(page.text)["limit"] == 25
    assert 'data-theme="light"' in page.text
    assert _config(api.request("GET", f"/live/{slug}").text)["limit"] == competition["leaderboardSize"]
    for path, params, field in ((f"/live/{slug}", {"theme": "purple"}, "theme"),
                                (f"/play/{slug}", {"theme": ""}, "theme"),
                                (f"/live/{slug}", {"limit": "0"}, "limit"),
                                (f"/live/{slug}", {"limit": "501"}, "limit"),
                                (f"/live/{slug}", {"limit": "ten"}, "limit")):
        resp = api.request("GET", path, params=params)
        expect(resp, 400)
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert [e["field"] for e in resp.json()["errors"]] == [field]
    for path in ("/live/no-such-competition", "/play/no-such-competition", "/live/no-such-competition/status"):
        expect(api.request("GET", path), 404)


def test_a_title_cannot_break_out_of_the_page(api: Api) -> None:
    title = '</script><script>alert(1)</script><b onclick="x">&'
    slug = api.create_competition(unique("xss"), title=title)["slug"]
    for path in (f"/live/{slug}", f"/play/{slug}"):
        html = api.request("GET", path).text
        assert "<script>alert(1)" not in html and "<b onclick" not in html
        assert _config(html)["title"] == title


def test_the_status_tells_the_freeze_and_when_the_last_team_runs_out_of_time(api: Api) -> None:
    slug = api.create_competition(unique("clock"), timeLimitSeconds=600)["slug"]
    status = api.request("GET", f"/live/{slug}/status").json()
    assert (status["state"], status["frozen"], status["endsAt"], status["timeLimitSeconds"]) == (
        "running", False, None, 600)
    first = api.register(slug)
    later = api.register(slug)
    status = api.request("GET", f"/live/{slug}/status").json()
    assert status["endsAt"] == api.me(slug, later.token)["deadline"] > api.me(slug, first.token)["deadline"]
    api.patch_competition(slug, freeze=True)
    status = api.request("GET", f"/live/{slug}/status").json()
    assert status["frozen"] is True and status["freezeAt"] is not None


# -- the projector ---------------------------------------------------------------------------


def test_projector_shows_a_new_score_within_a_second_without_a_reload(api: Api, open_page: Callable[..., Page],
                                                                     competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(2))
    owls = api.register(slug, unique("owls"))
    page = open_page(f"/live/{slug}", PROJECTOR)
    assert row_points(page, owls.name) == "1000"
    see(page.locator("#state")).to_have_text("Running")
    see(page.locator("#connection")).to_have_attribute("data-ok", "true")
    page.evaluate("window.sameDocument = true")

    api.claim(slug, owls.token, "Q1")
    assert ok_job(api.submit(slug, owls.token, "Q1", answer_of("Q1")))["totalPoints"] == 1100
    # The answer's job has finished (and was announced) when the API answers; the page must
    # show the new score within a second of that.
    page.wait_for_function(
        "name => document.querySelector(`li.row[data-team=\"${name}\"]`)?.dataset.points === '1100'",
        arg=owls.name, timeout=1000)
    assert page.evaluate("window.sameDocument") is True
    see(page.locator("#ticker")).to_contain_text(f"{owls.name} answered right +100")
    see(page.locator("#ticker")).to_contain_text(f"{owls.name} claimed Q1")


def test_projector_drops_stale_events_and_starts_again_from_a_fresh_snapshot(
        api: Api, open_page: Callable[..., Page], listen: Callable[..., Listener],
        competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    owls = api.register(slug, unique("owls"))
    page = open_page(f"/live/{slug}", PROJECTOR)
    assert row_points(page, owls.name) == "1000"
    see(page.locator("#connection")).to_have_attribute("data-ok", "true")
    spectator = listen(slug)
    # As if the page had applied a later event than any the server will send: all look stale.
    page.evaluate("window.quizLive.lastSeq = Number.MAX_SAFE_INTEGER")
    api.claim(slug, owls.token, "Q1")
    ok_job(api.submit(slug, owls.token, "Q1", answer_of("Q1")))
    spectator.wait_event("leaderboard_update",
                         lambda p: any(r["teamName"] == owls.name and r["points"] == 1100 for r in p["leaderboard"]))
    time.sleep(1.0)
    assert row_points(page, owls.name) == "1000"
    # A reconnect starts a new session whose snapshot is applied, though numbered lower (as
    # another realtime process may number it).
    page.evaluate("window.quizLive.socket.io.engine.close()")
    see(page.locator(f'li.row[data-team="{owls.name}"]')).to_have_attribute("data-points", "1100")
    see(page.locator("#connection")).to_have_attribute("data-ok", "true")
    assert page.evaluate("window.quizLive.lastSeq < Number.MAX_SAFE_INTEGER") is True


def test_projector_without_the_realtime_server_reads_the_board_from_the_api(
        api: Api, open_page: Callable[..., Page], competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    owls = api.register(slug, unique("owls"))
    page = open_page(f"/live/{slug}", PROJECTOR)
    assert row_points(page, owls.name) == "1000"
    see(page.locator("#connection")).to_have_attribute("data-ok", "true")
    page.evaluate("window.quizLive.socket.disconnect()")
    see(page.locator("#connection")).to_have_attribute("data-ok", "false")
    api.claim(slug, owls.token, "Q1")
    ok_job(api.submit(slug, owls.token, "Q1", answer_of("Q1")))
    see(page.locator(f'li.row[data-team="{owls.name}"]')).to_have_attribute("data-points", "1100")
    assert page.evaluate("window.quizLive.socket.connected") is False


def test_projector_ranks_move_and_limit_reads_past_the_broadcast_top(api: Api, open_page: Callable[..., Page],
                                                                    ) -> None:
    slug = api.create_competition(unique("ranks"), leaderboardSize=2)["slug"]
    api.add_questions(slug, questions(3, points=lambda i: 100 * i))
    teams = [api.register(slug, unique(f"t{i}")) for i in range(3)]
    page = open_page(f"/live/{slug}?limit=3&theme=light", PROJECTOR)
    # Three rows although the realtime server broadcasts the top 2: ?limit= reads the REST board.
    see(page.locator("li.row")).to_have_count(3)
    last = teams[2]
    api.claim(slug, last.token, "Q3")
    ok_job(api.submit(slug, last.token, "Q3", answer_of("Q3")))
    see(page.locator("li.row").first).to_have_attribute("data-team", last.name)
    see(page.locator(f'li.row[data-team="{last.name}"] .move')).to_have_class(re.compile(r"\bup\b"))
    see(page.locator("li.row")).to_have_count(3)
    assert page.evaluate("document.documentElement.dataset.theme") == "light"


def test_projector_keeps_the_frozen_standings(api: Api, stack: Stack, open_page: Callable[..., Page],
                                              listen: Callable[..., Listener], competition: dict[str, Any]) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(2))
    owls, bats = api.register(slug, unique("owls")), api.register(slug, unique("bats"))
    page = open_page(f"/live/{slug}", PROJECTOR)
    assert row_points(page, bats.name) == "1000"

    frozen = api.patch_competition(slug, freeze=True)
    see(page.locator("#frozen")).to_contain_text("Standings frozen at", timeout=15_000)
    assert frozen["freezeAt"][11:16] in page.locator("#frozen").inner_text()  # HH:MM, the page is in UTC
    organiser = listen(slug, stack.settings.admin_token)
    api.claim(slug, bats.token, "Q1")
    ok_job(api.submit(slug, bats.token, "Q1", answer_of("Q1")))
    # Organisers see the change live; once they have, give the spectators' path time to have
    # delivered it too, had it been going to.
    organiser.wait_event("leaderboard_update",
                         lambda p: any(r["teamName"] == bats.name and r["points"] == 1100 for r in p["leaderboard"]))
    time.sleep(1.5)
    assert row_points(page, bats.name) == "1000"
    # A reload during the freeze starts from the frozen snapshot too.
    page.reload()
    see(page.locator("#frozen")).to_be_visible()
    see(page.locator("#connection")).to_have_attribute("data-ok", "true")
    assert row_points(page, bats.name) == "1000"
    see(page.locator("li.row").first).to_have_attribute("data-team", owls.name)

    api.patch_competition(slug, freeze=False)
    see(page.locator(f'li.row[data-team="{bats.name}"]')).to_have_attribute("data-points", "1100")
    see(page.locator("li.row").first).to_have_attribute("data-team", bats.name)
    see(page.locator("#frozen")).to_be_hidden()


# -- the team page ----------------------------------------------------------------------------


def _token(page: Page, slug: str) -> str:
    return page.evaluate(f"JSON.parse(localStorage.getItem('quiz:{slug}:team')).token")


def _register(page: Page, name: str) -> None:
    page.get_by_label("Team name").fill(name)
    page.get_by_label("Members").fill("Ann, Bo")
    page.get_by_role("button", name="Register").click()
    see(page.locator("#game")).to_be_visible()
    see(page.locator("#team-name")).to_have_text(name)
    see(page.locator("#connection")).to_have_attribute("data-ok", "true")


def test_team_page_plays_claim_answer_and_mystery_box_by_clicking(api: Api, open_page: Callable[..., Page]) -> None:
    slug = api.create_competition(unique("play"), timeLimitSeconds=1800,
                                  mysteryPrices={"EASY": 50, "MEDIUM": 100, "HARD": 150})["slug"]
    api.add_questions(slug, with_options(questions(3)) + with_options(
        questions(2, prefix="E", kind="mystery", difficulty="EASY")
        + questions(2, prefix="H", kind="mystery", difficulty="MEDIUM")))
    page = open_page(f"/play/{slug}", PHONE, is_mobile=True, has_touch=True)
    name = unique("phones")
    _register(page, name)
    token = _token(page, slug)
    see(page.locator("#points")).to_have_text("1,000")
    see(page.locator("#time-left")).to_have_text(re.compile(r"^(29|30):\d\d$"))

    # The board updates live: another team's claim shows without a reload.
    rival = api.register(slug)
    ok_job(api.claim(slug, rival.token, "Q2"))
    see(page.locator('button[data-question="Q2"]')).to_have_attribute("data-status", "taken")
    see(page.locator('button[data-question="Q2"]')).to_be_disabled()

    # Claim, see the question, answer, see the result with points and rank.
    page.locator('button[data-question="Q1"]').click()
    see(page.locator("#current-text")).to_have_text("What is the answer to Q1?")
    page.get_by_label(answer_of("Q1"), exact=True).check()
    page.get_by_role("button", name="Submit answer").click()
    see(page.locator("#message")).to_have_text("Right! +100 points. You have 1,100 points, rank 1.")
    see(page.locator("#points")).to_have_text("1,100")
    see(page.locator("#rank")).to_have_text("1")
    see(page.locator('button[data-question="Q1"]')).to_have_attribute("data-status", "answered")
    assert api.me(slug, token)["points"] == 1100

    # A claim that lost the race, in plain words. The socket is down, so the page cannot know
    # Q3 went meanwhile, and the job's result comes by polling.
    page.evaluate("window.quizPlay.socket.disconnect()")
    ok_job(api.claim(slug, api.register(slug).token, "Q3"))
    page.locator('button[data-question="Q3"]').click()
    see(page.locator("#message")).to_have_text("Another team got there first.")
    page.evaluate("window.quizPlay.socket.connect()")
    see(page.locator('button[data-question="Q3"]')).to_have_attribute("data-status", "taken")

    # A mystery box: prices shown, paid up front, answered right.
    easy = page.get_by_role("button", name="Easy mystery box: costs 50 points, wins 100")
    see(easy).to_contain_text("costs 50")
    easy.click()
    see(page.locator("#current-title")).to_contain_text("Mystery box (easy)")
    see(page.locator("#points")).to_have_text("1,050")
    see(easy).to_be_disabled()
    box = api.me(slug, token)["openMysteryBox"]
    page.get_by_label(answer_of(box["mysteryQuestionId"]), exact=True).check()
    page.get_by_role("button", name="Submit answer").click()
    see(page.locator("#message")).to_contain_text("Right! +100 points. You have 1,150 points")
    see(page.locator("#points")).to_have_text("1,150")

    # Another, forfeited: no refund.
    page.get_by_role("button", name="Medium mystery box: costs 100 points, wins 200").click()
    see(page.locator("#points")).to_have_text("1,050")
    page.get_by_role("button", name="Forfeit box (no refund)").click()
    see(page.locator("#message")).to_have_text("Mystery box forfeited. The points paid are not refunded.")
    see(page.locator("#current")).to_be_hidden()
    me = api.me(slug, token)
    assert (me["points"], me["openMysteryBox"]) == (1050, None)

    # Job results came as job_update events (only the claim made while offline was polled).
    finished = page.evaluate("window.quizPlay.finishedBy")
    assert finished["event"] >= 4 and finished["poll"] == 1, finished
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_team_page_is_usable_from_the_keyboard(api: Api, open_page: Callable[..., Page]) -> None:
    slug = api.create_competition(unique("keys"), maxOpenClaims=2)["slug"]
    api.add_questions(slug, questions(1) + with_options(questions(1, start=2)))
    page = open_page(f"/play/{slug}", PHONE)
    page.get_by_label("Team name").focus()
    page.keyboard.type(unique("keys"))
    page.keyboard.press("Enter")
    see(page.locator("#game")).to_be_visible()
    see(page.locator("#connection")).to_have_attribute("data-ok", "true")

    def tab_to(selector: str) -> None:
        for _ in range(40):
            page.keyboard.press("Tab")
            if page.evaluate("s => document.activeElement.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}")

    tab_to('button[data-question="Q2"]')
    page.keyboard.press("Enter")
    see(page.locator("#current-text")).to_have_text("What is the answer to Q2?")
    assert page.evaluate("document.activeElement.id") == "current-title"
    tab_to('input[name="option"]')
    page.keyboard.press("ArrowDown")  # the second option, the right one
    assert page.evaluate("document.activeElement.value") == answer_of("Q2")
    tab_to("#answer-button")
    page.keyboard.press("Enter")
    see(page.locator("#message")).to_contain_text("Right! +100 points")

    # A question without options takes a typed answer; Enter in the box sends it.
    page.locator("#forget").focus()
    tab_to('button[data-question="Q1"]')
    page.keyboard.press("Enter")
    see(page.locator("#current-text")).to_have_text("What is the answer to Q1?")
    tab_to("#answer-input")
    assert page.evaluate("document.activeElement.labels[0].textContent") == "Your answer"
    page.keyboard.type(answer_of("Q1"))
    page.keyboard.press("Enter")
    see(page.locator("#message")).to_contain_text("Right! +100 points. You have 1,200 points")


def test_team_page_asks_for_the_registration_code_and_refuses_a_taken_name(api: Api,
                                                                          open_page: Callable[..., Page]) -> None:
    slug = api.create_competition(unique("names"))["slug"]
    taken = api.register(slug).name
    page = open_page(f"/play/{slug}", PHONE)
    page.get_by_label("Team name").fill(taken)
    page.get_by_role("button", name="Register").click()
    see(page.locator("#message")).to_have_text("Another team already has that name. Pick another one.")
    see(page.locator("#register")).to_be_visible()
    assert page.evaluate(f"localStorage.getItem('quiz:{slug}:team')") is None
    page.get_by_label("Team name").fill("")
    page.get_by_role("button", name="Register").click()
    # The browser's own check: nothing is sent for an empty required field.
    assert page.evaluate("document.getElementById('team-name-input').validity.valueMissing") is True


# Every visible text's contrast against the background it sits on (WCAG 2 relative luminance).
LOW_CONTRAST = """() => {
  const parse = (c) => {
    const m = c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const [r, g, b, a = 1] = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return { r, g, b, a };
  };
  const lum = ({ r, g, b }) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) return c;
    }
    return parse(getComputedStyle(document.documentElement).backgroundColor);
  };
  const low = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const text = walker.currentNode.textContent.trim();
    const el = walker.currentNode.parentElement;
    if (!text || !el.checkVisibility()) continue;
    const [hi, lo] = [lum(parse(getComputedStyle(el).color)), lum(background(el))].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    if (ratio < 4.5) low.push(`${el.tagName}.${el.className} "${text.slice(0, 30)}": ${ratio.toFixed(2)}`);
  }
  return low;
}"""


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_every_text_on_both_pages_has_enough_contrast(api: Api, open_page: Callable[..., Page], theme: str) -> None:
    slug = api.create_competition(unique("contrast"), timeLimitSeconds=600)["slug"]
    api.add_questions(slug, with_options(questions(3)))
    rival = api.register(slug)
    api.claim(slug, rival.token, "Q2")
    ok_job(api.submit(slug, rival.token, "Q2", "wrong"))
    live = open_page(f"/live/{slug}?theme={theme}", PROJECTOR)
    play = open_page(f"/play/{slug}?theme={theme}", PHONE)
    assert play.evaluate(LOW_CONTRAST) == []
    _register(play, unique("eyes"))
    play.locator('button[data-question="Q1"]').click()
    see(play.locator("#current")).to_be_visible()
    api.patch_competition(slug, freeze=True)
    see(live.locator("#frozen")).to_be_visible()
    see(live.locator("#countdown")).to_be_visible()
    see(live.locator("#ticker li").first).to_be_visible()
    time.sleep(2)  # past the rows' flash and the ticker's fade-in
    assert live.evaluate(LOW_CONTRAST) == []
    assert play.evaluate(LOW_CONTRAST) == []


# -- the official JavaScript client ------------------------------------------------------------


@pytest.fixture(scope="module")
def node_client() -> Path:
    """tests/js with socket.io-client installed from its lock file (npm ci) if it is not yet."""
    node = _program("node", "apt-get install nodejs")
    if not (JS_DIR / "node_modules" / "socket.io-client" / "package.json").exists():
        npm = _program("npm", "apt-get install npm")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=300)
    return Path(node)


class NodeClient:
    """``tests/js/client.mjs`` in a subprocess; its JSON lines are read as they come."""

    def __init__(self, node: Path, *args: str) -> None:
        self.proc = subprocess.Popen([str(node), "client.mjs", *args], cwd=JS_DIR, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        for line in self.seen:
            if predicate(line):
                return line
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                stderr = ""
                if self.proc.poll() is not None and self.proc.stderr is not None:
                    stderr = self.proc.stderr.read()
                raise AssertionError(f"timed out; the client printed {self.seen} {stderr}") from None
            self.seen.append(line)
            if predicate(line):
                return line

    def event(self, name: str, match: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:
        return self.wait(lambda line: line["type"] == "event" and line["event"] == name and match(line["data"]))["data"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_the_official_javascript_client_gets_the_snapshot_and_every_event(
        node_client: Path, api: Api, stack: Stack, competition: dict[str, Any], transport: str) -> None:
    slug = competition["slug"]
    api.add_questions(slug, questions(1))
    team = api.register(slug)
    client = NodeClient(node_client, stack.realtime_url, slug, team.token, transport, "60")
    try:
        assert client.wait(lambda line: line["type"] == "connect")["transport"] == transport
        snapshot = client.event("leaderboard_update")
        assert {"rank": 1, "teamName": team.name, "points": 1000} in snapshot["leaderboard"]
        api.claim(slug, team.token, "Q1")
        job = api.submit(slug, team.token, "Q1", answer_of("Q1"))
        client.event("question_claimed", lambda p: p["questionId"] == "Q1" and p["teamName"] == team.name)
        client.event("score_update", lambda p: p["teamName"] == team.name and p["points"] == 1100 and p["rank"] == 1)
        pushed = client.event("job_update", lambda p: p["jobId"] == job["jobId"])
        assert pushed["status"] == "succeeded" and pushed["result"]["totalPoints"] == 1100
        client.event("leaderboard_update",
                     lambda p: {"rank": 1, "teamName": team.name, "points": 1100} in p["leaderboard"])
        seqs = [line["data"]["seq"] for line in client.seen if line["type"] == "event"]
        assert seqs == sorted(set(seqs)), seqs
        assert all(line["data"]["competition"] == slug for line in client.seen if line["type"] == "event")
    finally:
        client.close()


def test_the_official_javascript_client_is_refused_a_bad_token(node_client: Path, stack: Stack,
                                                               competition: dict[str, Any]) -> None:
    client = NodeClient(node_client, stack.realtime_url, competition["slug"], "not-a-token", "websocket", "30")
    try:
        assert client.wait(lambda line: line["type"] != "event") == {"type": "connect_error",
                                                                     "message": "invalid token"}
    finally:
        client.close()
