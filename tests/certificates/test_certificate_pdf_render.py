"""How the certificate PDF is drawn: the QR code as runs of one path, lines broken by our own rules."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from registry import certificate_pdf as pdf

URL = "https://tanhui.example/retirements/THC-2026-0123456789"


def test_qr_dashes_cover_exactly_the_dark_modules() -> None:
    code = pdf.QrCode(URL)
    n = len(code.matrix)
    assert n == 33   # 54 bytes at level M need version 4: 17 + 4 * 4 modules a side
    drawn = set()
    for y, first, last, dash in code.dashes():
        assert dash[-1] == 1 and len(dash) % 2 == 0 and sum(dash[:-1]) == last - first
        x = first
        for i, length in enumerate(dash[:-1]):
            if i % 2 == 0:   # even entries are dashes (drawn), odd ones gaps
                drawn |= {(y, x + k) for k in range(length)}
            x += length
    assert drawn == {(y, x) for y, row in enumerate(code.matrix) for x, dark in enumerate(row) if dark}
    rows = {y: (first, last, dash) for y, first, last, dash in code.dashes()}
    # Row 0: the two top finder patterns, 7 dark modules each, in the corners.
    assert rows[0][0] == 0 and rows[0][1] == n and rows[0][2][0] == 7 and rows[0][2][-2] == 7
    # Row 6: the timing pattern between the finders alternates, dark on even columns.
    assert rows[6][2][2:-2] == [1] * (len(rows[6][2]) - 4)


def test_qr_size_includes_the_quiet_zone() -> None:
    code = pdf.QrCode(URL, size=123.0)
    assert code.size == 123.0 and code.value == URL


def _texts(lines: list[tuple[float, tuple[pdf.Part, ...]]]) -> list[str]:
    return ["".join(part.text for part in parts) for _, parts in lines]


def test_latin_text_breaks_at_spaces_and_long_words_between_characters() -> None:
    words = "alpha beta gamma delta epsilon zeta eta theta"
    lines = pdf.break_lines([pdf.Span(words, pdf.LATIN, 7.5)], 60)
    assert len(lines) > 1 and " ".join(_texts(lines)) == words      # whole words, one space between
    assert all(width <= 60 for width, _ in lines)
    assert all(width == pytest.approx(pdf.text_width(text, pdf.LATIN, 7.5))
               for (width, _), text in zip(lines, _texts(lines), strict=True))
    digest = "9c52a2e978c661f67c9a" * 8          # one word wider than the line
    lines = pdf.break_lines([pdf.Span(digest, pdf.MONO, 7.5)], 100)
    assert len(lines) > 1 and "".join(_texts(lines)) == digest and all(w <= 100 for w, _ in lines)
    assert _texts(pdf.break_lines([pdf.Span("a  b\nc", pdf.LATIN, 9)], 500)) == ["a b", "c"]
    assert _texts(pdf.break_lines([pdf.Span("", pdf.LATIN, 9)], 500)) == [""]


def test_cjk_text_breaks_between_characters_not_before_closing_punctuation() -> None:
    pdf.cjk_font()
    text = "兹证明下列减排量已在登记簿中永久注销，归属于大湾区论坛，不可再转让或使用。" * 3
    for width in (50, 61, 77, 95.5, 120):
        lines = pdf.break_lines([pdf.Span(text, pdf.LATIN, 10)], width)
        texts = _texts(lines)
        assert "".join(texts) == text
        assert all(w <= width + 1e-6 for w, _ in lines)
        assert not any(t[0] in pdf.NO_LINE_START for t in texts)
        assert all(len(t) >= int(width // 10) - 1 for t in texts[:-1])    # lines are filled
    parts = pdf.break_lines([pdf.Span("论坛 GBA Forum", pdf.LATIN_BOLD, 13)], 500)[0][1]
    assert [(p.text, p.font) for p in parts] == [("论坛", pdf.CJK), (" GBA Forum", pdf.LATIN_BOLD)]


def test_a_word_across_spans_does_not_break() -> None:
    spans = [pdf.Span("182.640 t CO", pdf.LATIN_BOLD, 13), pdf.Span("2", pdf.LATIN_BOLD, 11, rise=-6.5),
             pdf.Span("e", pdf.LATIN_BOLD, 13)]
    width = pdf.text_width("182.640 t CO", pdf.LATIN_BOLD, 13) + 2
    lines = pdf.break_lines(spans, width)
    assert _texts(lines) == ["182.640 t", "CO2e"]
    assert [p.rise for p in lines[1][1]] == [0.0, -6.5, 0.0]


def _doc(number: str, beneficiary: str, serials: int, message: str | None = None) -> dict[str, Any]:
    from registry import certificates as certs

    rows = [{"serial": f"THR-00007-2025-{i}-1-1000", "vintage": 2025, "quantity_kg": 1000,
             "project": {"id": 7, "code": "00007", "title": "公交出行", "title_en": "Public transit"},
             "methodology": {"code": "CI-BUS", "version": "2.1", "title_zh": "公共交通"}} for i in range(1, serials + 1)]
    body = {"certificate_number": number, "registry": certs.REGISTRY_NAME, "beneficiary": beneficiary,
            "jurisdiction": "广东省", "purpose": "event_offset", "message": message, "footprint_ref": None,
            "quantity_kg": 1000 * serials, "retired_at": "2026-01-02T03:04:05Z", "retired_by": {"name": "会务方"},
            "serials": rows, "verification_url": f"https://x.example/retirements/{number}"}
    return {"certificate": body, "sha256": "ab" * 32, "algorithm": "Ed25519", "key_id": "0123456789abcdef"}


def test_the_bytes_do_not_depend_on_what_was_rendered_before() -> None:
    """Paragraphs, character widths and the text operators of lines are remembered; a
    certificate rendered first (nothing remembered) and after others, including one that flows over
    pages, are the same bytes."""
    import threading

    short, long_ = _doc("THC-1", "大湾区论坛 GBA Forum", 2), _doc("THC-2", "成都大运会", 90)
    pdf._fixed.cache_clear()
    pdf._widths.clear()
    pdf._line_code.clear()
    pdf._paragraph.cache_clear()
    pdf._span_atoms.cache_clear()
    cold = pdf.render_pdf(short)
    long_bytes = pdf.render_pdf(long_)
    assert len(re.findall(rb"/Type /Page\b(?!s)", long_bytes)) >= 2
    assert pdf.render_pdf(short) == cold and pdf.render_pdf(long_) == long_bytes
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(pdf.render_pdf(short)))
    t.start()
    t.join()
    assert out == [cold]


def _pages(data: bytes, tmp_path: Path) -> list[str]:
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    path = tmp_path / "c.pdf"
    path.write_bytes(data)
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                          text=True).stdout
    return text.split("\f")[:-1]


def test_the_ranges_table_repeats_its_head_on_every_page(tmp_path: Path) -> None:
    pages = _pages(pdf.render_pdf(_doc("THC-3", "成都大运会", 70)), tmp_path)
    assert len(pages) >= 3
    ranges = [page for page in pages if "THR-00007-2025-" in page]
    assert len(ranges) >= 3 and all("Serial" in page and "Methodology" in page for page in ranges)
    assert all(f"page {i}" in page for i, page in enumerate(pages, start=1))
    text = "".join(pages)
    assert all(f"THR-00007-2025-{i}-1-1000" in text for i in range(1, 71))
    assert "Verification" in pages[-1] and "70,000" in pages[-1]


def test_a_message_taller_than_a_page_is_cut_between_lines(tmp_path: Path) -> None:
    message = "\n".join(f"第{i}行 line {i}" for i in range(1, 121))
    pages = _pages(pdf.render_pdf(_doc("THC-4", "大湾区论坛", 1, message)), tmp_path)
    assert len(pages) >= 3
    text = "".join(pages)
    assert all(f"line {i}\n" in text or f"line {i} " in text for i in range(1, 121))


def test_the_font_dictionaries_are_reportlabs_formatted_once() -> None:
    """The built-in CID font's and the standard Type 1 fonts' dictionaries, formatted once and
    reused, give the bytes reportlab's own UnicodeCIDFont and Font give; reportlab's "Helvetica"
    is left as it is."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    doc = _doc("THC-5", "大湾区论坛 GBA Forum", 3)
    assert isinstance(pdfmetrics.getFont(pdf.cjk_font()), pdf.CIDFont)
    assert all(isinstance(pdfmetrics.getFont(f), pdf.Type1Font) for f in (pdf.LATIN, pdf.LATIN_BOLD, pdf.MONO))
    assert not isinstance(pdfmetrics.getFont("Helvetica"), pdf.Type1Font)
    ours = pdf.render_pdf(doc)
    assert pdf.render_pdf(doc) == ours
    assert b"/BaseFont /Helvetica" in ours and b"Tanhui-" not in ours
    names = (pdf.CJK, pdf.LATIN, pdf.LATIN_BOLD, pdf.MONO)
    kept = [pdfmetrics.getFont(name) for name in names]
    pdfmetrics.registerFont(UnicodeCIDFont(pdf.CJK))
    for name, face in ((pdf.LATIN, "Helvetica"), (pdf.LATIN_BOLD, "Helvetica-Bold"), (pdf.MONO, "Courier")):
        pdfmetrics.registerFont(pdfmetrics.Font(name, face, "WinAnsiEncoding"))
    try:
        assert pdf.render_pdf(doc) == ours
    finally:
        for font in kept:
            pdfmetrics.registerFont(font)


def test_control_characters_in_a_message_name_no_extra_font(tmp_path: Path) -> None:
    """A tab shows as a space, a carriage return (a form's "\\r\\n") and other control characters are
    dropped: reportlab would set them in a substitution font, which a remembered line would then
    name in documents that do not have it."""
    lines = pdf.break_lines([pdf.Span("a\tb\r\nc\x00d\x7f", pdf.LATIN, 9)], 500)
    assert _texts(lines) == ["a b", "cd"]
    message = "第一行 line one\r\nline\ttwo\x07"
    first = pdf.render_pdf(_doc("THC-6", "大湾区论坛", 1, message))
    again = pdf.render_pdf(_doc("THC-7", "大湾区论坛", 1, message))
    for data in (first, again):
        assert b"/Symbol" not in data and b"/ZapfDingbats" not in data
    text = "".join(_pages(again, tmp_path))
    assert "line one" in text and "line two" in text
