"""How the certificate PDF is drawn cheaply: the QR code as runs of one path, line breaking once per width."""

from __future__ import annotations

from typing import Any

import pytest

from registry import certificate_pdf as pdf

URL = "https://tanhui.example/retirements/THC-2026-0123456789"


def test_qr_runs_cover_exactly_the_dark_modules() -> None:
    code = pdf.QrCode(URL)
    n = len(code.matrix)
    assert n == 33   # 54 bytes at level M need version 4: 17 + 4 * 4 modules a side
    runs = code.runs()
    assert sum(length for _, _, length in runs) == sum(sum(row) for row in code.matrix)
    drawn = {(y, x + i) for y, x, length in runs for i in range(length)}
    assert drawn == {(y, x) for y, row in enumerate(code.matrix) for x, dark in enumerate(row) if dark}
    # Row 0: the two top finder patterns, 7 dark modules each, in the corners.
    row0 = [r for r in runs if r[0] == 0]
    assert row0[0] == (0, 0, 7) and row0[-1] == (0, n - 7, 7)
    # Row 6: the timing pattern between the finders alternates, dark on even columns.
    assert [r for r in runs if r[0] == 6 and 7 < r[1] < n - 8] == [(6, x, 1) for x in range(8, n - 8, 2)]


def test_qr_size_includes_the_quiet_zone() -> None:
    code = pdf.QrCode(URL, size=123.0)
    assert code.wrap(500, 500) == (123.0, 123.0)
    assert code.value == URL


def test_paragraph_breaks_lines_once_per_width(monkeypatch: pytest.MonkeyPatch) -> None:
    style = pdf._styles(pdf.cjk_font())["base"]
    p = pdf.Paragraph(pdf.rich("兹证明下列减排量已在登记簿中永久注销，归属于 GBA Forum 2026，不可再转让或使用。" * 3), style)
    calls: list[Any] = []
    original = pdf._Paragraph.breakLinesCJK

    def counting(self: Any, widths: Any) -> Any:
        calls.append(widths)
        return original(self, widths)

    monkeypatch.setattr(pdf._Paragraph, "breakLinesCJK", counting)
    wide = p.wrap(400, 1000)
    assert p.wrap(400, 50) == wide and len(calls) == 1   # the height offered does not change the lines
    narrow = p.wrap(150, 1000)
    assert narrow[1] > wide[1] and len(calls) == 2
    assert p.wrap(400, 1000) == wide and len(calls) == 3  # the lines changed meanwhile: broken again
    assert p.wrap(400, 1000) == wide and len(calls) == 3
    first, rest = p.split(400, style.leading * 2)
    assert first.wrap(400, 1000)[1] == style.leading * 2
    assert first.wrap(400, 1000)[1] + rest.wrap(400, 1000)[1] == wide[1]


def test_ascii_text_breaks_at_spaces_and_cjk_text_by_cjk_rules() -> None:
    st = pdf._styles(pdf.cjk_font())
    latin = pdf.Paragraph("Verify offline: download this certificate's JSON", st["small"])
    assert latin.style.wordWrap is None and latin.style.fontSize == st["small"].fontSize
    assert pdf.Paragraph(pdf.rich("离线验证 offline"), st["small"]).style.wordWrap == "CJK"
    words = pdf.Paragraph("alpha beta gamma delta epsilon zeta eta theta", st["small"])
    words.wrap(60, 1000)
    lines = [" ".join(line[1]) for line in words.blPara.lines]
    assert len(lines) > 1 and " ".join(lines) == "alpha beta gamma delta epsilon zeta eta theta"  # whole words
    digest = pdf.Paragraph("9c52a2e978c661f67c9a" * 8, st["mono"])   # one word wider than the line
    width, height = digest.wrap(100, 1000)
    assert height == st["mono"].leading * len(digest.blPara.lines) and len(digest.blPara.lines) > 1
    assert "".join("".join(line[1]) for line in digest.blPara.lines) == "9c52a2e978c661f67c9a" * 8


def _doc(number: str, beneficiary: str, serials: int) -> dict[str, Any]:
    from registry import certificates as certs

    rows = [{"serial": f"THR-00007-2025-{i}-1-1000", "vintage": 2025, "quantity_kg": 1000,
             "project": {"id": 7, "code": "00007", "title": "公交出行", "title_en": "Public transit"},
             "methodology": {"code": "CI-BUS", "version": "2.1", "title_zh": "公共交通"}} for i in range(1, serials + 1)]
    body = {"certificate_number": number, "registry": certs.REGISTRY_NAME, "beneficiary": beneficiary,
            "jurisdiction": "广东省", "purpose": "event_offset", "message": None, "footprint_ref": None,
            "quantity_kg": 1000 * serials, "retired_at": "2026-01-02T03:04:05Z", "retired_by": {"name": "会务方"},
            "serials": rows, "verification_url": f"https://x.example/retirements/{number}"}
    return {"certificate": body, "sha256": "ab" * 32, "algorithm": "Ed25519", "key_id": "0123456789abcdef"}


def test_fixed_paragraphs_are_kept_per_thread_and_change_no_byte() -> None:
    """The fixed paragraphs (title, labels, heads) are parsed and broken once per thread: a thread's
    first certificate (nothing kept yet) and a certificate drawn after others, including one that
    flows over pages, are the same bytes."""
    import threading

    style = pdf._styles(pdf.cjk_font())["small"]
    assert pdf.fixed("Total", style) is pdf.fixed("Total", style)
    short, long_ = _doc("THC-1", "大湾区论坛 GBA Forum", 2), _doc("THC-2", "成都大运会", 90)
    cold: dict[str, bytes] = {}

    def first_in_a_new_thread() -> None:
        assert getattr(pdf._per_thread, "paragraphs", None) is None   # a new thread starts empty
        cold["short"] = pdf.render_pdf(short)
        cold["kept"] = pdf.fixed("Total", style)

    t = threading.Thread(target=first_in_a_new_thread)
    t.start()
    t.join()
    assert cold["kept"] is not pdf.fixed("Total", style)
    pdf.render_pdf(short)
    long_bytes = pdf.render_pdf(long_)
    assert long_bytes.count(b"/Type /Page\n") >= 2
    assert pdf.render_pdf(short) == cold["short"]
    assert pdf.render_pdf(long_) == long_bytes


def test_same_frag_answers_as_reportlab_does() -> None:
    """The faster `sameFrag` installed for reportlab's line breaking gives reportlab's answers: one
    fragment is the same as itself unless it carries a line break or an image; distinct fragments are
    compared by reportlab."""
    from reportlab.platypus import paragraph as rl_paragraph
    from reportlab.platypus.paraparser import ParaFrag

    assert rl_paragraph.sameFrag is pdf.same_frag
    original = pdf._reportlab_same_frag
    assert original is not pdf.same_frag

    def frag(**kw: Any) -> Any:
        f = ParaFrag(fontName="Helvetica", fontSize=9, textColor=None, rise=0, link=None, backColor=None, text="x")
        f.__dict__.update(kw)
        return f

    plain, twin, bigger = frag(), frag(), frag(fontSize=10)
    broken, image = frag(lineBreak=True), frag(cbDefn=ParaFrag(width=5))
    cases = [(plain, plain), (plain, twin), (plain, bigger), (broken, broken), (image, image), (plain, broken),
             (image, plain), (frag(fontName="STSong-Light"), plain)]
    answers = [bool(pdf.same_frag(f, g)) for f, g in cases]
    assert answers == [bool(original(f, g)) for f, g in cases]
    assert answers == [True, True, False, False, False, False, False, False]


def test_remembered_widths_and_ascents_are_reportlabs() -> None:
    """The memoised `stringWidth` and `getAscentDescent` installed for reportlab's paragraphs give
    reportlab's numbers (asked twice: measured, then remembered), for Latin, CJK and monospaced
    fonts, single characters and longer text; a font registered again under its name is measured
    again."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.platypus import paragraph as rl_paragraph

    assert rl_paragraph.stringWidth is pdf.string_width
    assert rl_paragraph.getAscentDescent is pdf.ascent_descent
    cjk = pdf.cjk_font()
    for font in (pdf.LATIN, pdf.LATIN_BOLD, pdf.MONO, cjk):
        for size in (7.5, 9.5, 13, 26):
            for text in ("W", "i", "碳", "，", "Tanhui 碳惠", ""):
                expected = pdfmetrics.stringWidth(text, font, size)
                assert pdf.string_width(text, font, size) == expected
                assert pdf.string_width(text, font, size) == expected
            assert pdf.ascent_descent(font, size) == pdfmetrics.getAscentDescent(font, size)
            assert pdf.ascent_descent(font, size) == pdfmetrics.getAscentDescent(font, size)
    assert pdf.string_width("W", pdf.LATIN, 10) == pytest.approx(9.44)   # Helvetica's W: 944/1000 em
    assert pdf.string_width("碳", cjk, 10) == 10.0          # a full-width CJK glyph: 1 em

    name = "test-font-registered-twice"
    pdfmetrics._fonts[name] = pdfmetrics.getFont(pdf.LATIN)
    try:
        assert pdf.string_width("W", name, 10) == pytest.approx(9.44)
        pdfmetrics._fonts[name] = pdfmetrics.getFont(pdf.MONO)   # the name now means Courier
        assert pdf.string_width("W", name, 10) == pytest.approx(6.0)   # every Courier glyph: 600/1000 em
    finally:
        del pdfmetrics._fonts[name]
