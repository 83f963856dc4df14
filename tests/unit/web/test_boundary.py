"""web/ depends on models/ and the shared contract modules only, never on workers/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

_PROBE = """
import json, sys
from settings import Settings
from web.app import create_app
# Built, not only imported: the producer and every resource's routing are made here.
create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
print(json.dumps(sorted(m for m in sys.modules if m == "workers" or m.startswith("workers."))))
"""


def test_the_api_imports_nothing_from_workers() -> None:
    # A fresh interpreter: in this one, other tests may have imported workers already.
    run = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.splitlines()[-1]) == []
