"""The same-run reference (issue 11): the physical ceiling of one write on this machine.

A minimal Falcon app, run under the API's own gunicorn configuration
(``gunicorn -c web/gunicorn_conf.py loadtests.reference_app:app``): ``POST /reference`` parses
the JSON body, inserts it as one row into PostgreSQL (its own transaction, through the same
SQLAlchemy pool the API uses) and pushes one message onto a Redis list, and answers 202. No
validation, authentication, routing or jobs: whatever the real API does beyond this is its own
cost, so a scenario's rate over this one's is the share of the machine's write ceiling it reaches.
"""

from __future__ import annotations

import json

import falcon
import redis
from sqlalchemy import text

from models.db import make_engine
from settings import Settings

TABLE = "bench_reference"
CREATE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, body jsonb NOT NULL, "
          "created_at timestamptz NOT NULL DEFAULT now())")
INSERT = text(f"INSERT INTO {TABLE} (body) VALUES (CAST(:body AS jsonb)) RETURNING id")


class Reference:
    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.key = f"{settings.redis_prefix}:reference"

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = json.dumps(req.get_media())
        with self.engine.begin() as conn:
            row_id = conn.execute(INSERT, {"body": body}).scalar_one()
        self.redis.rpush(self.key, row_id)
        resp.status = falcon.HTTP_202
        resp.media = {"id": row_id}


class Health:
    def on_get(self, _req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


def create_app(settings: Settings) -> falcon.App:
    app = falcon.App()
    app.add_route("/reference", Reference(settings))
    app.add_route("/healthz", Health())
    return app


# Imported by each gunicorn worker after fork (no preload), so each builds its own pool.
app = create_app(Settings.from_env())
