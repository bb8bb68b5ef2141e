"""The Flask app factory: the only place where the pieces are wired."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from exchange import models as _exchange_models  # noqa: F401  (registers the tables on Base.metadata)
from exchange import offset_models as _offset_models  # noqa: F401
from exchange import offset_payments as _offset_payments  # noqa: F401  (card payment of offset orders)
from exchange import payment_models as _payment_models  # noqa: F401
from registry import behaviour as _behaviour  # noqa: F401  (partners, behaviour events, points)
from registry import calculators as _calculators  # noqa: F401  (registers the methodology calculators)
from registry import factors as _factors  # noqa: F401
from registry import models  # noqa: F401
from registry import programme_periods as _periods  # noqa: F401
from registry.db import normalise_url
from web.config import Config, default_sqlite_url, from_environment
from web.extensions import db, migrate

MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")


def create_app(config: type | dict[str, Any] | None = None) -> Flask:
    """Configuration: the `Config` class, then the environment (DATABASE_URL, SECRET_KEY, ...), then
    `config` (a class or a mapping: what tests and scripts pass explicitly wins). With no database URL
    the app uses a SQLite file in the instance folder."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_object(Config)
    app.config.update(from_environment())
    if isinstance(config, dict):
        app.config.update(config)
    elif config is not None:
        app.config.from_object(config)
    url = app.config.get("SQLALCHEMY_DATABASE_URI") or default_sqlite_url(app.instance_path)
    app.config["SQLALCHEMY_DATABASE_URI"] = normalise_url(url)
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]

    from registry.certificate_pdf import tonnes
    app.jinja_env.filters["tonnes"] = tonnes   # kg → "1.850" t, integer arithmetic

    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR)

    from web import offset_pages  # noqa: F401  (adds its page to the pages blueprint)
    from web.api import bp as api_bp
    from web.cli import register_cli
    from web.pages import bp as pages_bp

    app.register_blueprint(api_bp)
    app.register_blueprint(pages_bp)
    register_cli(app)

    from web.payments_setup import configure_payments
    configure_payments(app)   # jobs and commands refund cards outside a request

    from web.sealer import start_command_watch, start_embedded_sequencer, start_sealer
    start_sealer(app)
    start_command_watch(app)
    start_embedded_sequencer(app)
    return app
