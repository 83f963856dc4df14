"""The only module that knows the event-loop library (eventlet by default, gevent too).

Monkey patching must happen before redis, psycopg or socketio are imported, so ``main``
patches first and imports the application afterwards.
"""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import logs
from settings import Settings

log = logging.getLogger("realtime")

T = TypeVar("T")


class Runtime:
    """Spawning and sleeping the way the chosen async mode wants."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def spawn(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.mode == "eventlet":
            import eventlet

            return eventlet.spawn(fn, *args)
        if self.mode == "gevent":
            import gevent

            return gevent.spawn(fn, *args)
        import threading

        thread = threading.Thread(target=fn, args=args, daemon=True)
        thread.start()
        return thread

    def sleep(self, seconds: float) -> None:
        if self.mode == "eventlet":
            import eventlet

            eventlet.sleep(seconds)
        elif self.mode == "gevent":
            import gevent

            gevent.sleep(seconds)
        else:
            import time

            time.sleep(seconds)


def _patch(mode: str) -> None:
    if mode == "eventlet":
        import eventlet

        eventlet.monkey_patch()
    elif mode == "gevent":
        from gevent import monkey

        monkey.patch_all()


def serve(settings: Settings, wsgi_app: Any) -> None:
    address = (settings.realtime_host, settings.realtime_port)
    if settings.realtime_async_mode == "eventlet":
        import eventlet
        import eventlet.wsgi

        listener = eventlet.listen(address, backlog=4096)
        eventlet.wsgi.server(listener, wsgi_app, log_output=False, max_size=20000)
    elif settings.realtime_async_mode == "gevent":
        from gevent.pywsgi import WSGIServer

        server = WSGIServer(address, wsgi_app, log=None, backlog=4096)
        signal.signal(signal.SIGTERM, lambda *_: server.stop(timeout=5))
        server.serve_forever()
    else:
        from wsgiref.simple_server import make_server

        make_server(*address, wsgi_app).serve_forever()


def _tune_gc() -> None:
    """Keep the cyclic garbage collector from stalling every client at once.

    With 2,000 clients the process tracks about 400,000 objects, and a full collection walked
    them all every ~15 s: 1.1 s in which no event went out (measured in the fan-out benchmark,
    where it made p99 commit-to-event 3.3 s). What exists at start-up is frozen out of
    collection for good; a larger first generation lets the short-lived objects of each event
    die young instead of being promoted, so full collections become rare.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def main(settings: Settings | None = None) -> int:
    settings = settings or Settings.from_env()
    _patch(settings.realtime_async_mode)
    logs.configure(settings, "realtime")
    from realtime.app import create_realtime

    runtime = Runtime(settings.realtime_async_mode)
    wsgi_app = create_realtime(settings, runtime)
    _tune_gc()
    log.info("realtime (%s) listening on %s:%s", settings.realtime_async_mode, settings.realtime_host,
             settings.realtime_port)
    serve(settings, wsgi_app)
    return 0
