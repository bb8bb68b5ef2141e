"""The certificate routes and CLI commands. They skip until web/ wires them (see the routes in the
certificates work's hand-over: /api/v1/retirements/<no>/certificate.json|.pdf, the well-known key,
`flask registry verify-certificate`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from registry import certificates as certs
from registry.certificates import SigningKey
from tests.certificates.conftest import Retired


def _require(app: Flask, endpoint: str) -> None:
    if endpoint not in app.view_functions:
        pytest.skip(f"web/ does not serve {endpoint} yet")


def _use_key(app: Flask, tmp_path: Path) -> SigningKey:
    key = SigningKey.generate()
    path = tmp_path / "registry-key.pem"
    path.write_bytes(key.private_pem())
    app.config[certs.KEY_FILE_ENV] = str(path)
    app.config["PUBLIC_BASE_URL"] = "https://registry.tanhui.example"
    app.extensions.pop("tanhui_signing_key", None)
    return key


def test_certificate_json_pdf_and_public_key_over_http(app: Flask, client: Any, retired: Retired,
                                                       tmp_path: Path) -> None:
    _require(app, "api.get_certificate_json")
    key = _use_key(app, tmp_path)
    number = retired.retirement.certificate_number
    res = client.get(f"/api/v1/retirements/{number}/certificate.json")
    assert res.status_code == 200 and res.mimetype == "application/json"
    doc = certs.load_document(res.data)
    assert doc["key_id"] == key.key_id and doc["certificate"]["quantity_kg"] == 182_640
    assert doc["certificate"]["verification_url"] == f"https://registry.tanhui.example/retirements/{number}"
    # Re-issued byte for byte.
    assert client.get(f"/api/v1/retirements/{number}/certificate.json").data == res.data

    pem = client.get(certs.PUBLIC_KEY_PATH)
    assert pem.status_code == 200 and pem.data == key.public_key_pem()
    assert certs.verify_document(doc, pem.data).ok

    pdf = client.get(f"/api/v1/retirements/{number}/certificate.pdf")
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf" and pdf.data.startswith(b"%PDF-")

    assert client.get("/api/v1/retirements/THC-NOPE/certificate.json").status_code == 404
    assert client.get("/api/v1/retirements/THC-NOPE/certificate.pdf").status_code == 404


def test_verify_certificate_command(app: Flask, runner: Any, session: Any, retired: Retired,
                                    tmp_path: Path) -> None:
    from web.cli import registry_cli

    if "verify-certificate" not in registry_cli.commands:
        pytest.skip("web/ has no `flask registry verify-certificate` yet")
    key = _use_key(app, tmp_path)
    doc = certs.issue_document(session, retired.retirement, key, "https://registry.tanhui.example")
    good, bad, pem = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "key.pem"
    good.write_bytes(certs.document_bytes(doc))
    doc["certificate"]["beneficiary"] = "别人"
    bad.write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    pem.write_bytes(key.public_key_pem())

    ok = runner.invoke(args=["registry", "verify-certificate", str(good), "--public-key", str(pem)])
    assert ok.exit_code == 0 and "OK" in ok.output, ok.output
    ko = runner.invoke(args=["registry", "verify-certificate", str(bad), "--public-key", str(pem)])
    assert ko.exit_code == 1 and "SHA-256 mismatch" in ko.output, ko.output
    other = tmp_path / "other.pem"
    other.write_bytes(SigningKey.generate().public_key_pem())
    ko = runner.invoke(args=["registry", "verify-certificate", str(good), "--public-key", str(other)])
    assert ko.exit_code == 1 and "public key given" in ko.output
    # Without --public-key: this registry's own key.
    assert runner.invoke(args=["registry", "verify-certificate", str(good)]).exit_code == 0
