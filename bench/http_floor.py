"""The floor of order entry on this machine: the least a Flask app on gunicorn can do per order POST.

`bench/exchange_bench.py` serves this app with the same gunicorn settings as the real one and hits it
with the same load generator, in the same run, as a peer. Each POST does what any order entry must
at the least: parse the JSON body, read the bearer token, write one row and commit it on PostgreSQL
(psycopg, one connection per thread, no ORM, no validation, no hold, no engine), and answer 201 with
a JSON body. Whatever order entry does beyond that only adds to it, so if this floor cannot reach a
rate with a latency, neither can the exchange on the same machine.

    gunicorn -k gthread -w 4 --threads 4 -b 127.0.0.1:PORT 'bench.http_floor:create_app()'
    (env FLOOR_DSN=postgresql://...; the table xbench_floor must exist: `create_table(dsn)`)
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import psycopg
from flask import Flask, Response, request

TABLE_DDL = ("CREATE TABLE IF NOT EXISTS xbench_floor (id bigserial PRIMARY KEY, token text NOT NULL, "
             "body jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now())")


def create_table(dsn: str) -> None:
    with psycopg.connect(dsn) as c:
        c.execute(TABLE_DDL)


def create_app(dsn: str | None = None) -> Flask:
    app = Flask(__name__)
    dsn = dsn or os.environ["FLOOR_DSN"]
    local = threading.local()

    def conn() -> psycopg.Connection[Any]:
        c = getattr(local, "conn", None)
        if c is None or c.closed:
            c = local.conn = psycopg.connect(dsn)
        return c

    @app.post("/floor/orders")
    def place() -> Response:
        auth = request.headers.get("Authorization", "")
        body = request.get_json(silent=True)
        if not auth.startswith("Bearer ") or not isinstance(body, dict):
            return Response(json.dumps({"error": {"code": "bad_request"}}), 400, mimetype="application/json")
        c = conn()
        row = c.execute("INSERT INTO xbench_floor (token, body) VALUES (%s, %s) RETURNING id",
                        (auth[7:], json.dumps(body))).fetchone()
        c.commit()
        assert row is not None
        return Response(json.dumps({"id": row[0], "status": "open"}), 201, mimetype="application/json")

    return app
