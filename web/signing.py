"""The registry's certificate signing key, loaded once per app (see registry.certificates)."""

from __future__ import annotations

from flask import current_app

from registry.certificates import SigningKey


def signing_key() -> SigningKey:
    """From TANHUI_SIGNING_KEY_FILE (config or environment), else instance/certificate-signing-key.pem,
    generated (0600) on first use."""
    key = current_app.extensions.get("tanhui_signing_key")
    if key is None:
        key = SigningKey.from_config(current_app.config, current_app.instance_path)
        current_app.extensions["tanhui_signing_key"] = key
    return key
