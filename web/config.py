"""Configuration: a class of defaults, then environment variables override it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class Config:
    SECRET_KEY = "dev-only-change-me"
    SQLALCHEMY_DATABASE_URI: str | None = None  # default: sqlite file under the instance folder
    SQLALCHEMY_ENGINE_OPTIONS: dict[str, Any] = {"pool_pre_ping": True}
    JSON_SORT_KEYS = False
    API_TOKEN_TTL_HOURS = 24 * 30
    API_PAGE_SIZE_MAX = 200
    AUDIT_SEALER_INTERVAL_S = 2.0   # background sealer thread in the embedded default; 0 disables
    PUBLIC_BASE_URL = "http://127.0.0.1:5000"
    EMBEDDED_SEQUENCER = True       # the sequencer runs as a thread of the app (embedded default)
    ORDER_WAIT_S = 2.0              # how long an order POST waits for the engine's result
    EMBEDDED_SCHEDULER = True       # the daily close and expiry jobs, with the embedded sequencer
    CLOSE_TIME = "15:00"            # China time
    TANHUI_SIGNING_KEY_FILE: str | None = None  # Ed25519 PEM; default instance/certificate-signing-key.pem
    CERTIFICATE_FONT_FILE: str | None = None    # a TrueType font to embed for Chinese in certificate PDFs
    STRIPE_API_KEY: str | None = None           # secret key (sk_...); card payments are off without it
    STRIPE_PUBLISHABLE_KEY: str | None = None   # pk_... handed to Stripe.js with a payment's client_secret
    STRIPE_API_BASE: str | None = None          # default Stripe's own; e.g. a localstripe URL in tests
    STRIPE_WEBHOOK_SECRET: str | None = None    # whsec_... of the webhook endpoint
    BEHAVIOUR_MAX_BATCH_ROWS = 50_000           # rows of one signed batch (POST /behaviour/batches); else 413
    BEHAVIOUR_MAX_BATCH_BYTES = 32 * 1024 * 1024  # bytes of its body; the CSV command has no limit


class TestConfig(Config):
    TESTING = True
    AUDIT_SEALER_INTERVAL_S = 0.0
    EMBEDDED_SEQUENCER = False
    EMBEDDED_SCHEDULER = False
    ORDER_WAIT_S = 5.0


ENV_KEYS = {
    "DATABASE_URL": "SQLALCHEMY_DATABASE_URI",
    "SECRET_KEY": "SECRET_KEY",
    "PUBLIC_BASE_URL": "PUBLIC_BASE_URL",
    "AUDIT_SEALER_INTERVAL_S": "AUDIT_SEALER_INTERVAL_S",
    "EMBEDDED_SEQUENCER": "EMBEDDED_SEQUENCER",
    "TANHUI_SIGNING_KEY_FILE": "TANHUI_SIGNING_KEY_FILE",
    "TANHUI_CERTIFICATE_FONT_FILE": "CERTIFICATE_FONT_FILE",
    "STRIPE_API_KEY": "STRIPE_API_KEY",
    "STRIPE_PUBLISHABLE_KEY": "STRIPE_PUBLISHABLE_KEY",
    "STRIPE_API_BASE": "STRIPE_API_BASE",
    "STRIPE_WEBHOOK_SECRET": "STRIPE_WEBHOOK_SECRET",
    "BEHAVIOUR_MAX_BATCH_ROWS": "BEHAVIOUR_MAX_BATCH_ROWS",
    "BEHAVIOUR_MAX_BATCH_BYTES": "BEHAVIOUR_MAX_BATCH_BYTES",
}


def from_environment() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for env, key in ENV_KEYS.items():
        if os.environ.get(env):
            value: Any = os.environ[env]
            if key == "AUDIT_SEALER_INTERVAL_S":
                value = float(value)
            elif key == "EMBEDDED_SEQUENCER":
                value = value.lower() in ("1", "true", "yes", "on")
            elif key in ("BEHAVIOUR_MAX_BATCH_ROWS", "BEHAVIOUR_MAX_BATCH_BYTES"):
                value = int(value.replace("_", "").replace(",", ""))
            out[key] = value
    return out


def default_sqlite_url(instance_path: str) -> str:
    Path(instance_path).mkdir(parents=True, exist_ok=True)
    return "sqlite:///" + str(Path(instance_path) / "tanhui.sqlite3")
