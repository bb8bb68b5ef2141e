"""The bilingual PDF certificate: built from the signed document only, with a QR code to its page."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from registry import certificate_pdf as pdf
from registry import certificates as certs
from registry.certificates import SigningKey
from tests.certificates.conftest import BASE_URL, Retired


def _text(path: Path) -> str:
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                          text=True).stdout


def test_tonnes_and_times() -> None:
    assert pdf.tonnes(182_640) == "182.640"
    assert pdf.tonnes(1) == "0.001"
    assert pdf.tonnes(1_234_567_890) == "1,234,567.890"
    assert pdf.times("2026-05-09T20:05:01Z") == ("2026-05-09 20:05:01 UTC",
                                                  "2026-05-10 04:05:01 北京时间 China time (UTC+8)")


def test_text_splits_into_latin_and_cjk_runs() -> None:
    assert pdf.script_runs("A<b>&") == [(True, "A<b>&")]
    assert pdf.script_runs("论坛 GBA") == [(False, "论坛"), (True, " GBA")]
    assert pdf.script_runs("CO₂ — 北京时间 (UTC+8)") == [(True, "CO"), (False, "₂"), (True, " — "), (False, "北京时间"),
                                                    (True, " (UTC+8)")]
    assert pdf.script_runs(None) == [] and pdf.script_runs("") == []


def test_pdf_from_the_signed_document(session: Session, retired: Retired, signing_key: SigningKey,
                                      tmp_path: Path) -> None:
    doc = certs.issue_document(session, retired.retirement, signing_key, BASE_URL)
    data = pdf.render_pdf(doc)
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert pdf.render_pdf(doc) == data  # deterministic
    path = tmp_path / "certificate.pdf"
    path.write_bytes(data)

    number = retired.retirement.certificate_number
    text = _text(path)
    for expected in (number, "Retirement Certificate", "182.640 t", "182,640 kg", doc["sha256"],
                     signing_key.key_id, retired.b1.serial(1, 60_000), retired.b2.serial(1_001, 123_640),
                     "FP-GBA-2026", "UTC", "verify-certificate", doc["certificate"]["verification_url"]):
        assert expected in text, expected


def test_the_pdf_shows_what_was_signed_not_the_database(session: Session, retired: Retired,
                                                        signing_key: SigningKey, tmp_path: Path) -> None:
    doc = certs.issue_document(session, retired.retirement, signing_key, BASE_URL)
    retired.retirement.footprint_ref = "FP-CHANGED-LATER"
    session.commit()
    path = tmp_path / "c.pdf"
    path.write_bytes(pdf.render_pdf(doc))
    text = _text(path)
    assert "FP-GBA-2026" in text and "FP-CHANGED-LATER" not in text
    retired.retirement.footprint_ref = "FP-GBA-2026"
    session.commit()


def test_qr_code_encodes_the_verification_url(session: Session, retired: Retired, signing_key: SigningKey,
                                              tmp_path: Path) -> None:
    doc = certs.issue_document(session, retired.retirement, signing_key, BASE_URL)
    url = doc["certificate"]["verification_url"]
    assert pdf.verification_qr(doc).value == url

    if shutil.which("pdftoppm") is None or shutil.which("zbarimg") is None:
        pytest.skip("pdftoppm and zbarimg (poppler-utils, zbar-tools) are needed to decode the QR code")
    pdf_path = tmp_path / "c.pdf"
    pdf_path.write_bytes(pdf.render_pdf(doc))
    subprocess.run(["pdftoppm", "-png", "-r", "150", str(pdf_path), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page*.png"))
    out = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", *map(str, pages)],
                         capture_output=True, text=True)
    assert out.stdout.split() == [url]


def test_many_ranges_flow_onto_more_pages(signing_key: SigningKey, tmp_path: Path) -> None:
    serials = [{"serial": f"THR-00007-2025-{i}-1-1000", "vintage": 2025, "quantity_kg": 1000,
                "project": {"id": 7, "code": "00007", "title": "公交出行" * 3, "title_en": "Public transit",
                            "city": "成都市"},
                "methodology": {"code": "CI-BUS", "version": "2.1", "title_zh": "公共交通", "title_en": "Bus"}}
               for i in range(1, 121)]
    body = {"schema": certs.SCHEMA, "registry": certs.REGISTRY_NAME, "certificate_number": "THC-TEST-1",
            "beneficiary": "成都大运会 <Chengdu & Co>", "jurisdiction": "四川省成都市", "purpose": "other",
            "message": None, "footprint_ref": None, "quantity_kg": 120_000, "retired_at": "2025-12-31T23:59:59Z",
            "retired_by": {"holder_id": 1, "name": "运营方"}, "serials": serials,
            "verification_url": "https://x.example/retirements/THC-TEST-1",
            "public_key_url": "https://x.example/.well-known/tanhui-registry-key.pem"}
    doc = certs.sign_body(body, signing_key)
    assert certs.verify_document(doc, signing_key.public_key_pem()).ok
    path = tmp_path / "long.pdf"
    path.write_bytes(pdf.render_pdf(doc))
    text = _text(path)
    assert text.count("\f") >= 3  # pages
    assert "THR-00007-2025-120-1-1000" in text and "120.000 t" in text and "<Chengdu & Co>" in text


WQY = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")  # Debian: fonts-wqy-microhei


def test_an_embedded_truetype_font_for_chinese(session: Session, retired: Retired, signing_key: SigningKey,
                                               tmp_path: Path) -> None:
    if not WQY.exists() or shutil.which("pdffonts") is None:
        pytest.skip("needs fonts-wqy-microhei and pdffonts (poppler-utils)")
    doc = certs.issue_document(session, retired.retirement, signing_key, BASE_URL)
    path = tmp_path / "embedded.pdf"
    path.write_bytes(pdf.render_pdf(doc, font_file=WQY))
    fonts = subprocess.run(["pdffonts", str(path)], check=True, capture_output=True, text=True).stdout
    assert "STSong" not in fonts
    embedded = [line for line in fonts.splitlines() if "WenQuanYi" in line or "CJK-" in line]
    assert embedded and all(" yes " in line for line in embedded), fonts
    text = _text(path)
    assert "碳中和注销证书" in text and "大湾区论坛" in text and retired.retirement.certificate_number in text


def test_default_font_is_the_builtin_cid_font(session: Session, retired: Retired, signing_key: SigningKey,
                                              tmp_path: Path) -> None:
    doc = certs.issue_document(session, retired.retirement, signing_key, BASE_URL)
    data = pdf.render_pdf(doc)
    assert b"/STSong-Light" in data and len(data) < 60_000
    path = tmp_path / "c.pdf"
    path.write_bytes(data)
    assert "碳中和注销证书" in _text(path)
