"""Scenario 5, fan-out: the full competition's teams change the scores while many Socket.IO
clients listen. The load on the API is scenario 3's; what is measured is the spectators' side,
so start them beside it (2,000 on one realtime process):

    .venv/bin/python -m loadtests.spectators --url http://127.0.0.1:8001 --slug SLUG --clients 2000
    .venv/bin/locust -f loadtests/fanout.py --headless -u 150 -r 150 -t 60s --host http://127.0.0.1:8000
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests.competition import TeamUser  # noqa: F401
