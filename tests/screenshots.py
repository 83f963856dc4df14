"""Take the screenshots of the pages in docs/screenshots/ with Debian's chromium, on a stack of its own.

    DATABASE_URL=... REDIS_URL=... .venv/bin/python -m tests.screenshots [--out docs/screenshots]

Starts the API, workers and realtime server on a fresh database (as the test suite does), plays
a few teams into a demo competition, and takes the projector at 1280x720 and the team page at
390x844 while events arrive.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from models.kinds import all_queues
from settings import Settings
from tests.conftest import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, _test_env, redis_db_lease, redis_url_with_db
from tests.integration.test_pages import CHROMIUM_ARGS, PHONE, PROJECTOR
from tests.support import Api, Stack, answer_of, questions

TEAMS = ["Quizzly Bears", "The Know-It-Owls", "Les Quizérables", "Agatha Quiztie", "Pi Rates",
         "Trivia Newton-John", "Universally Challenged", "Tequila Mockingbird", "Sherlock Homies",
         "The Smarty Pints", "Captain Obvious"]
LATE = ["Mind the Gap", "Quiz Khalifa", "E=MC Hammer"]


def _play(api: Api, slug: str, names: list[str], codes: list[str], wrong: float) -> None:
    for name, code in zip(names, codes, strict=False):
        team = api.register(slug, name)
        api.claim(slug, team.token, code)
        api.submit(slug, team.token, code, answer_of(code) if random.random() > wrong else "no idea")


def take(api: Api, out: Path) -> None:
    random.seed(7)
    slug = "demo"
    api.create_competition(slug, title="Friday maths league", timeLimitSeconds=1800)
    board = questions(16, points=lambda i: 100 * (1 + i % 3))
    for q in board:
        q["options"] = ["12", answer_of(q["questionId"]), "144", "none of these"]
    api.add_questions(slug, board + questions(4, prefix="M", kind="mystery", difficulty="EASY"))
    _play(api, slug, TEAMS, [f"Q{i}" for i in range(5, 16)], wrong=0.3)
    base = api.base_url
    with sync_playwright() as playwright:
        chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        live = browser.new_page(viewport=PROJECTOR)
        live.goto(f"{base}/live/{slug}")
        live.wait_for_selector("li.row")
        _play(api, slug, LATE, ["Q1", "Q2", "Q3"], wrong=0.0)
        time.sleep(1.5)
        live.screenshot(path=str(out / "projector.png"))

        phone = browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True)
        phone.goto(f"{base}/play/{slug}")
        phone.wait_for_selector("#register:not([hidden])")
        phone.screenshot(path=str(out / "team-page-register.png"))
        phone.get_by_label("Team name").fill("Night Owls")
        phone.get_by_label("Members").fill("Ann, Bo, Cy")
        phone.get_by_role("button", name="Register").click()
        phone.wait_for_selector("#game:not([hidden])")
        phone.locator('button[data-question="Q4"]').click()
        phone.wait_for_selector("#current:not([hidden])")
        time.sleep(0.5)
        phone.screenshot(path=str(out / "team-page.png"), full_page=True)

        api.patch_competition(slug, freeze=True)
        light = browser.new_page(viewport=PROJECTOR)
        light.goto(f"{base}/live/{slug}?theme=light&limit=8")
        light.wait_for_selector("#frozen:not([hidden])")
        time.sleep(1)
        light.screenshot(path=str(out / "projector-frozen-light.png"))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base_redis = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    with redis_db_lease(base_redis) as index:
        envs = _test_env(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL), redis_url_with_db(base_redis, index))
        env = next(envs)
        settings = Settings.from_env(env)
        stack = Stack(settings, {**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                      Path(tempfile.mkdtemp(prefix="quiz-screenshots-")))
        try:
            stack.start_api()
            stack.start_realtime()
            for q in all_queues(settings):
                stack.start_worker(q)
            stack.wait_http(stack.api_url + "/readyz")
            stack.wait_http(stack.realtime_url + "/healthz")
            stack.wait_workers(all_queues(settings))
            take(Api(stack.api_url), args.out)
        finally:
            stack.stop_all()
            envs.close()
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
