"""gunicorn entry point: ``gunicorn -c web/gunicorn_conf.py web.wsgi:app``.

Imported by each gunicorn worker after fork (no preload), so every process builds its own
engine and Redis clients.
"""

import logs
from settings import Settings
from web.app import create_app

settings = Settings.from_env()
logs.configure(settings, "api")
app = create_app(settings)
