"""Fault injection for the fault tests: hold a process at a named point while a file exists.

Off unless ``FAILPOINTS_DIR`` is set, and then only a ``stat`` per call. With it set, a process
reaching ``pause(settings, "consumer-after-commit.board.0")`` finds the file of that name in the
folder, writes ``<name>.hit`` (so a test knows it is there) and waits until the file is gone.
That is how a test kills a consumer after its commit and before its ack, or the API between its
commit and its enqueue, at the exact point the failure model in DESIGN.md talks about.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from settings import Settings

log = logging.getLogger(__name__)


def pause(settings: Settings, name: str, limit: float = 120.0) -> None:
    if not settings.failpoints_dir:
        return
    point = Path(settings.failpoints_dir) / name
    if not point.exists():
        return
    log.warning("failpoint %s: holding here while %s exists", name, point)
    point.with_name(name + ".hit").touch()
    deadline = time.monotonic() + limit
    while point.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
