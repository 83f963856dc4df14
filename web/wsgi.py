"""gunicorn entry point: ``gunicorn -c web/gunicorn_conf.py web.wsgi:app``.

Imported by each gunicorn worker after fork (no preload), so every process builds its own
engine and Redis clients.
"""

import logging

from settings import Settings
from web.app import create_app

settings = Settings.from_env()
logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app(settings)
