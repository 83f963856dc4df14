"""Open load (issue 11): a scenario's players at fixed arrival rates, stepped up.

Every closed-loop scenario's p95 mostly reflects its number of users. Here the rate is fixed
instead: ``QUIZ_OPEN_USERS`` players each begin one play at exponentially spaced instants, so
that together they offer ``rate`` plays per second, whatever the latency. A play is one task of
``QUIZ_OPEN_BASE``'s user: ``competition`` (the default; registered as they start, then claim
and answer, or a mystery box) or ``registration`` (one new team). The rate steps through
``QUIZ_OPEN_STEPS`` (plays/s, comma-separated), ``QUIZ_OPEN_STEP_SECONDS`` each, after a warm-up
of ``QUIZ_OPEN_WARMUP`` seconds at the first rate. A player whose play outlasts its interval
starts the next one late, so past the knee the offered rate is no longer reached: the report
shows both. The steps' wall-clock bounds are written beside the raw samples
(``QUIZ_SAMPLES`` + ``.steps.json``).

    QUIZ_OPEN_STEPS=20,40,80 .venv/bin/locust -f loadtests/open_load.py --headless --host http://127.0.0.1:8000
"""

import importlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import LoadTestShape, events
from locust.env import Environment

from loadtests import config

STEPS = [float(r) for r in os.environ.get("QUIZ_OPEN_STEPS", "20,40,60,80").split(",")]
STEP_SECONDS = float(os.environ.get("QUIZ_OPEN_STEP_SECONDS", "15"))
WARMUP = float(os.environ.get("QUIZ_OPEN_WARMUP", "10"))
USERS = int(os.environ.get("QUIZ_OPEN_USERS", "300"))
_BASES = {"competition": "TeamUser", "registration": "RegistrationUser"}
BASE = os.environ.get("QUIZ_OPEN_BASE", "competition")
# Imported by name, so that only the chosen scenario's hooks are installed.
_Player = getattr(importlib.import_module(f"loadtests.{BASE}"), _BASES[BASE])

# The rate offered now (plays/s over all players), set by the shape, read by every player.
_RATE = {"now": STEPS[0]}
_BOUNDS: list[dict[str, float]] = []


class OpenPlayer(_Player):  # type: ignore[misc, valid-type]
    def wait_time(self) -> float:
        # Poisson arrivals per player (the sum over USERS players is Poisson at the offered rate),
        # scheduled from the previous arrival, not from the end of the previous play.
        now = time.time()
        arrival = getattr(self, "_next_at", now) + random.expovariate(_RATE["now"] / USERS)
        if arrival < now - 1.0:
            # Far behind: one player cannot play twice at once, so the backlog is dropped and the
            # report shows the rate achieved under the rate offered.
            arrival = now
        self._next_at = arrival
        return max(0.0, arrival - now)


# Locust runs every User class it finds in this module: the closed-loop base must not be one.
del _Player


class Steps(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        index = int(max(0.0, elapsed - WARMUP) // STEP_SECONDS) if elapsed >= WARMUP else -1
        if index >= len(STEPS):
            return None
        rate = STEPS[max(0, index)]
        if index >= 0 and (not _BOUNDS or _BOUNDS[-1]["step"] != index):
            now = time.time()
            if _BOUNDS:
                _BOUNDS[-1]["end"] = now
            _BOUNDS.append({"step": index, "rate": rate, "start": now, "end": now + STEP_SECONDS})
        _RATE["now"] = rate
        return USERS, max(50.0, USERS / 5)


@events.test_stop.add_listener
def _on_stop(environment: Environment, **_: Any) -> None:
    path = config.samples_path()
    if path is not None:
        Path(str(path) + ".steps.json").write_text(json.dumps({"users": USERS, "base": BASE, "steps": _BOUNDS}))
