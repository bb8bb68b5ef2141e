"""The printable certificate: a bilingual (中文 / English) A4 PDF with a QR code to its public page.

`render_pdf` is built only from a signed document (`registry.certificates.issue_document`), so the
PDF shows exactly what was signed, and it prints the digest and key id that verify it. Rendering is
deterministic (reportlab's invariant mode): the same document gives the same bytes.

Chinese text uses reportlab's built-in CID font STSong-Light (Adobe-GB1): no font file is shipped
or embedded; PDF viewers supply the glyphs. Text is split into runs so Latin characters use
Helvetica and everything else the CID font.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import os
import threading
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors  # type: ignore[import-untyped]
from reportlab.lib import rl_accel as _rl_accel  # type: ignore[import-untyped]
from reportlab.lib.enums import TA_CENTER, TA_RIGHT  # type: ignore[import-untyped]
from reportlab.lib.pagesizes import A4  # type: ignore[import-untyped]
from reportlab.lib.styles import ParagraphStyle  # type: ignore[import-untyped]
from reportlab.lib.units import mm  # type: ignore[import-untyped]
from reportlab.pdfbase import pdfmetrics  # type: ignore[import-untyped]
from reportlab.pdfbase.cidfonts import UnicodeCIDFont  # type: ignore[import-untyped]
from reportlab.pdfbase.ttfonts import TTFont  # type: ignore[import-untyped]
from reportlab.platypus import (  # type: ignore[import-untyped]
    Flowable,
    KeepTogether,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from reportlab.platypus import Paragraph as _Paragraph  # type: ignore[import-untyped]
from reportlab.platypus import paragraph as _paragraph_module  # type: ignore[import-untyped]

from registry import qr_matrix

CJK = "STSong-Light"
LATIN = "Helvetica"
LATIN_BOLD = "Helvetica-Bold"
MONO = "Courier"
CHINA_TIME = dt.timezone(dt.timedelta(hours=8))  # no DST since 1991
GREEN = colors.HexColor("#1f6f43")
PALE = colors.HexColor("#eef6f0")

PURPOSES = {
    "event_offset": ("活动碳中和", "Event carbon neutrality"),
    "organisational": ("组织碳中和", "Organisational carbon neutrality"),
    "personal": ("个人碳中和", "Personal carbon neutrality"),
    "other": ("其他", "Other"),
}

class Paragraph(_Paragraph):  # type: ignore[misc]
    """A Paragraph that breaks its lines once per width, by CJK rules only where it has CJK text.

    Tables and KeepTogether ask a cell the same question two or three times (to measure, to split,
    to draw); line breaking with CJK rules is most of a certificate's rendering time. The result
    depends only on the text, the style and the width, so it is kept while the lines are unchanged.
    Text that is all ASCII (hashes, serials, English sentences) breaks at spaces, as Latin text
    should, which is also much cheaper (words longer than a line are still split)."""

    def __init__(self, text: str, style: ParagraphStyle, *args: Any, **kw: Any) -> None:
        if text is not None and style.wordWrap == "CJK" and text.isascii():
            style = _latin_variant(style)
        super().__init__(text, style, *args, **kw)

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        memo = self.__dict__.get("_wrapped")
        if memo is not None and memo[0] == avail_width and memo[1] is getattr(self, "blPara", None):
            self.width, self.height, self._wrapWidths = avail_width, memo[2], memo[3]
            return avail_width, memo[2]
        width, height = super().wrap(avail_width, avail_height)
        self._wrapped = (avail_width, getattr(self, "blPara", None), height, getattr(self, "_wrapWidths", None))
        return width, height


_reportlab_same_frag = _rl_accel.sameFrag   # what reportlab's paragraph module imports (C, or Python)


def same_frag(f: Any, g: Any) -> Any:
    """reportlab's `sameFrag` (may two text fragments share one word?), answering at once when both
    are the same object, which is what CJK line breaking asks for nearly every character.

    reportlab's C `sameFrag` looks up eight attributes on both fragments, most of them absent (an
    AttributeError raised and cleared each time): ~15 us a call, and `makeCJKParaLine` calls it once
    per character of every line, ~15% of a certificate's rendering. The answer for one object is
    the same as reportlab's: not the same when it carries an image (`cbDefn`) or a line break,
    otherwise equal to itself. Any two distinct fragments still go to reportlab's function."""
    if f is g:
        return 0 if hasattr(f, "cbDefn") or hasattr(f, "lineBreak") else 1
    return _reportlab_same_frag(f, g)


_reportlab_string_width = pdfmetrics.stringWidth
_reportlab_ascent_descent = pdfmetrics.getAscentDescent
_char_widths: dict[tuple[Any, ...], float] = {}
_ascents: dict[tuple[Any, ...], tuple[float, float]] = {}
_MEMO_LIMIT = 1 << 16


def string_width(text: str, font_name: str, font_size: float, encoding: str = "utf8") -> float:
    """reportlab's `stringWidth`, remembering the width of single characters.

    CJK line breaking measures every character alone (reportlab's `cjkU`, once per character of
    every paragraph), ~7 us a call through reportlab's font lookup and width function, ~10% of a
    certificate's rendering. A character's width in a font object at a size never changes, so it is
    kept (keyed by the registered font object, so a font registered again under the same name is
    measured again; at most 65,536 entries, then forgotten). Longer text is measured as before."""
    if len(text) != 1:
        return _reportlab_string_width(text, font_name, font_size, encoding)
    key = (text, pdfmetrics.getFont(font_name), font_size, encoding)
    width = _char_widths.get(key)
    if width is None:
        if len(_char_widths) >= _MEMO_LIMIT:
            _char_widths.clear()
        width = _char_widths[key] = _reportlab_string_width(text, font_name, font_size, encoding)
    return width


def ascent_descent(font_name: str, font_size: float | None = None) -> tuple[float, float]:
    """reportlab's `getAscentDescent`, remembered per font object and size (asked per character by
    CJK line breaking, like `string_width`)."""
    key = (pdfmetrics.getFont(font_name), font_size)
    found = _ascents.get(key)
    if found is None:
        if len(_ascents) >= _MEMO_LIMIT:
            _ascents.clear()
        found = _ascents[key] = _reportlab_ascent_descent(font_name, font_size)
    return found


# Installed for every paragraph of the process: they give reportlab's answers, only faster
# (tests/certificates/test_certificate_pdf_render.py compares them). Each calls reportlab's own
# function, taken from where the paragraph module imports it, so a reloaded module does not stack them.
_paragraph_module.sameFrag = same_frag
_paragraph_module.stringWidth = string_width
_paragraph_module.getAscentDescent = ascent_descent


@functools.lru_cache(maxsize=64)
def _latin_variant(style: ParagraphStyle) -> ParagraphStyle:
    return ParagraphStyle(f"{style.name}-latin", style, wordWrap=None, splitLongWords=1)


def cjk_font(font_file: str | os.PathLike[str] | None = None) -> str:
    """Register and name the font for Chinese text.

    Without `font_file`: the built-in CID font STSong-Light, not embedded (the viewer supplies the
    glyphs; every desktop OS and Acrobat have them). With a TrueType file (.ttf, or .ttc: its first
    face), e.g. /usr/share/fonts/truetype/wqy/wqy-microhei.ttc from Debian's fonts-wqy-microhei:
    a subset of it is embedded, so the PDF shows the same everywhere.
    """
    if font_file is None:
        if CJK not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(UnicodeCIDFont(CJK))
        return CJK
    path = os.fspath(font_file)
    name = "CJK-" + hashlib.sha256(path.encode()).hexdigest()[:8]
    if name not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(name, path, subfontIndex=0))
    return name


def _is_latin(ch: str) -> bool:
    try:
        ch.encode("cp1252")  # what the standard Helvetica (WinAnsi) can show
        return True
    except UnicodeEncodeError:
        return False


def rich(text: str | None, cjk: str = CJK) -> str:
    """Paragraph markup for arbitrary text: escaped, with non-Latin runs in the CJK font `cjk`."""
    if not text:
        return ""
    out: list[str] = []
    run = ""
    run_latin = True
    for ch in text:
        is_latin = _is_latin(ch)
        if run and is_latin != run_latin:
            out.append(escape(run) if run_latin else f'<font name="{cjk}">{escape(run)}</font>')
            run = ""
        run += ch
        run_latin = is_latin
    if run:
        out.append(escape(run) if run_latin else f'<font name="{cjk}">{escape(run)}</font>')
    return "".join(out).replace("\n", "<br/>")



def tonnes(kg: int) -> str:
    """Integer kg as tonnes with three decimals, by integer arithmetic: 182640 -> "182.640"."""
    sign = "-" if kg < 0 else ""
    t, rest = divmod(abs(kg), 1000)
    return f"{sign}{t:,}.{rest:03d}"


def times(retired_at: str) -> tuple[str, str]:
    """("2026-05-09 07:35:25 UTC", "2026-05-09 15:35:25 北京时间 China time (UTC+8)")."""
    t = dt.datetime.strptime(retired_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    fmt = "%Y-%m-%d %H:%M:%S"
    return (t.strftime(fmt) + " UTC",
            t.astimezone(CHINA_TIME).strftime(fmt) + " 北京时间 China time (UTC+8)")


QUIET_ZONE = 4  # modules of white around the symbol, as ISO/IEC 18004 asks


class QrCode(Flowable):  # type: ignore[misc]
    """A QR code (error correction M) of `value`, `size` points square, quiet zone included.

    The module matrix is segno's (`registry.qr_matrix` makes it, choosing segno's mask faster); the
    dark modules are drawn as one filled path of one rectangle per horizontal run (a few hundred path
    operators, no per-module drawing objects)."""

    def __init__(self, value: str, size: float = 34 * mm) -> None:
        super().__init__()
        self.value = value
        self.size = size
        self.matrix = [bytes(row) for row in qr_matrix.matrix(value)]

    def runs(self) -> list[tuple[int, int, int]]:
        """(row, first column, length) of every horizontal run of dark modules."""
        out = []
        for y, row in enumerate(self.matrix):
            x, n = 0, len(row)
            while x < n:
                if row[x]:
                    start = x
                    while x < n and row[x]:
                        x += 1
                    out.append((y, start, x - start))
                else:
                    x += 1
        return out

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        return self.size, self.size

    def draw(self) -> None:
        m = self.size / (len(self.matrix) + 2 * QUIET_ZONE)
        top = self.size - QUIET_ZONE * m
        path = self.canv.beginPath()
        for y, x, n in self.runs():
            path.rect((QUIET_ZONE + x) * m, top - (y + 1) * m, n * m, m)
        self.canv.setFillColor(colors.black)
        self.canv.drawPath(path, stroke=0, fill=1)


def qr_drawing(url: str, size: float = 34 * mm) -> QrCode:
    """A QR code (error correction M) of `url`, `size` points square, quiet zone included."""
    return QrCode(url, size)


@functools.lru_cache(maxsize=8)
def _styles(cjk: str) -> dict[str, ParagraphStyle]:
    """The certificate's paragraph styles for a CJK font (built once: reportlab does not change them)."""
    base = ParagraphStyle("base", fontName=LATIN, fontSize=9.5, leading=13, wordWrap="CJK")
    return {
        "base": base,
        "small": ParagraphStyle("small", base, fontSize=7.5, leading=9.5),
        "mono": ParagraphStyle("mono", base, fontName=MONO, fontSize=7.5, leading=9.5),
        "label": ParagraphStyle("label", base, fontSize=8.5, leading=11, textColor=colors.HexColor("#444444")),
        "value": ParagraphStyle("value", base, fontSize=10, leading=13.5),
        "big": ParagraphStyle("big", base, fontName=LATIN_BOLD, fontSize=13, leading=17, textColor=GREEN),
        "title_zh": ParagraphStyle("title_zh", base, fontName=cjk, fontSize=26, leading=34,
                                   alignment=TA_CENTER, textColor=GREEN),
        "title_en": ParagraphStyle("title_en", base, fontName=LATIN_BOLD, fontSize=15, leading=20,
                                   alignment=TA_CENTER, textColor=GREEN),
        "center": ParagraphStyle("center", base, alignment=TA_CENTER),
        "h2": ParagraphStyle("h2", base, fontName=LATIN_BOLD, fontSize=10.5, leading=15, textColor=GREEN,
                             spaceBefore=8, spaceAfter=3),
        "right": ParagraphStyle("right", base, fontSize=8, leading=10, alignment=TA_RIGHT),
        "small_right": ParagraphStyle("small_right", base, fontSize=7.5, leading=9.5, alignment=TA_RIGHT),
    }


_per_thread = threading.local()


def fixed(text: str, style: ParagraphStyle) -> Paragraph:
    """A paragraph whose text is the same on every certificate (title, labels, column heads, the
    offline-verification note): parsed and broken into lines once per thread, then only drawn.

    Parsing the markup and breaking the lines (by CJK rules) is most of what a paragraph costs, and
    about half of a certificate's paragraphs never change. Only paragraphs that stay whole are kept
    (in tables or at the top of the first page: never split across pages, which would make new
    ones); a kept paragraph keeps its lines for the one width it is laid out at (`Paragraph.wrap`'s
    memo) and drawing does not change it. Per thread, because laying out writes to the paragraph.
    The keys are the fixed texts of this module and the few styles of `_styles`, so the cache stays
    small."""
    cache: dict[tuple[str, ParagraphStyle], Paragraph] | None = getattr(_per_thread, "paragraphs", None)
    if cache is None:
        cache = _per_thread.paragraphs = {}
    p = cache.get((text, style))
    if p is None:
        p = cache[(text, style)] = Paragraph(text, style)
    return p


def _label(zh: str, en: str, st: Mapping[str, ParagraphStyle], cjk: str) -> Paragraph:
    return fixed(f'<font name="{cjk}">{escape(zh)}</font><br/>{escape(en)}', st["label"])


def build_story(document: Mapping[str, Any], font_file: str | os.PathLike[str] | None = None) -> list[Any]:
    """The flowables of the certificate, from the signed document only."""
    cjk = cjk_font(font_file)
    mark = functools.partial(rich, cjk=cjk)
    st = _styles(cjk)
    c = document["certificate"]
    number = str(c["certificate_number"])
    purpose_zh, purpose_en = PURPOSES.get(str(c["purpose"]), (str(c["purpose"]), str(c["purpose"])))
    utc, china = times(str(c["retired_at"]))
    qty = int(c["quantity_kg"])
    co2e = "CO<sub>2</sub>e"

    story: list[Any] = [
        Paragraph(mark(str(c.get("registry", ""))), st["right"]),
        Spacer(1, 4 * mm),
        fixed("碳中和注销证书", st["title_zh"]),
        fixed("Retirement Certificate", st["title_en"]),
        Spacer(1, 3 * mm),
        Paragraph(f"{mark('证书编号')} Certificate No. <b>{escape(number)}</b>", st["center"]),
        Spacer(1, 4 * mm),
        Paragraph(mark(f"兹证明下列减排量已在登记簿中永久注销，归属于 {c['beneficiary']}，不可再转让或使用。"),
                  st["base"]),
        Paragraph("This certifies that the carbon credits below were permanently retired in the registry on "
                  f"behalf of {mark(str(c['beneficiary']))}; they can never be transferred or used again.",
                  st["base"]),
        Spacer(1, 4 * mm),
    ]

    retired_by = c.get("retired_by") or {}
    rows = [
        (("受益方", "Beneficiary"), Paragraph(mark(str(c["beneficiary"])), st["big"])),
        (("注销数量", "Quantity"),
         Paragraph(f"<b>{tonnes(qty)} t {co2e}</b> ({qty:,} kg)", st["big"])),
        (("用途", "Purpose"), Paragraph(f"{mark(purpose_zh)} / {escape(purpose_en)}", st["value"])),
        (("适用地域", "Jurisdiction"), Paragraph(mark(str(c["jurisdiction"])), st["value"])),
        (("注销方", "Retired by"), Paragraph(mark(str(retired_by.get("name", ""))), st["value"])),
        (("留言", "Message"), Paragraph(mark(c.get("message")) or "—", st["value"])),
        (("碳足迹", "Footprint"), Paragraph(mark(c.get("footprint_ref")) or "—", st["value"])),
        (("注销时间", "Retired at"), Paragraph(f"{escape(utc)}<br/>{mark(china)}", st["value"])),
    ]
    fields = Table([[_label(zh, en, st, cjk), value] for (zh, en), value in rows],
                   colWidths=[32 * mm, None], hAlign="LEFT")
    fields.setStyle(TableStyle([
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 0), (-1, -2), 0.25, colors.HexColor("#cccccc")),
        ("TOPPADDING", (0, 0), (-1, -1), 3),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
    ]))
    story += [fields, Paragraph(f"{mark('注销序列号')} Retired serial ranges", st["h2"])]

    head = [fixed(f'<font name="{cjk}">{zh}</font><br/>{en}', st["small"]) for zh, en in (
        ("序列号", "Serial"), ("项目", "Project"), ("年份", "Vintage"), ("方法学", "Methodology"),
        ("数量", "kg"))]
    table_rows: list[list[Any]] = [head]
    for s in c["serials"]:
        p, m = s["project"], s["methodology"]
        project = mark(str(p.get("title", "")))
        if p.get("title_en"):
            project += "<br/>" + mark(str(p["title_en"]))
        table_rows.append([
            Paragraph(escape(str(s["serial"])), st["mono"]),
            Paragraph(f"{project}<br/><font size=6.5>#{escape(str(p.get('code', p.get('id'))))}</font>",
                      st["small"]),
            Paragraph(str(int(s["vintage"])), st["small"]),
            Paragraph(f"{escape(str(m['code']))} v{escape(str(m['version']))}<br/>"
                      f"{mark(str(m.get('title_zh') or ''))}", st["small"]),
            Paragraph(f"{int(s['quantity_kg']):,}", st["small_right"]),
        ])
    table_rows.append(["", "", "", fixed(f"{mark('合计')} Total", st["small"]),
                       Paragraph(f"<b>{qty:,}</b>", st["small_right"])])
    serials = Table(table_rows, colWidths=[52 * mm, 48 * mm, 14 * mm, 36 * mm, None], repeatRows=1)
    serials.setStyle(TableStyle([
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("BACKGROUND", (0, 0), (-1, 0), PALE),
        ("LINEBELOW", (0, 0), (-1, 0), 0.5, GREEN),
        ("LINEBELOW", (0, 1), (-1, -2), 0.25, colors.HexColor("#dddddd")),
        ("LINEABOVE", (0, -1), (-1, -1), 0.5, GREEN),
    ]))
    story.append(serials)

    url = str(c["verification_url"])
    key_url = str(c.get("public_key_url", ""))
    verify_text = [
        Paragraph(f"{mark('验证')} Verify: <link href=\"{escape(url)}\" color=\"blue\">{escape(url)}</link>",
                  st["small"]),
        Paragraph(f"SHA-256: <font name=\"{MONO}\">{escape(str(document['sha256']))}</font>", st["small"]),
        Paragraph(f"{escape(str(document['algorithm']))} key id: "
                  f"<font name=\"{MONO}\">{escape(str(document['key_id']))}</font>"
                  + (f" — {mark('公钥')} public key: {escape(key_url)}" if key_url else ""), st["small"]),
        Spacer(1, 2 * mm),
        Paragraph(mark("离线验证：下载本证书的 JSON 文件和登记簿公钥，运行 ")
                  + f"<font name=\"{MONO}\">flask registry verify-certificate {escape(number)}.json "
                    "--public-key tanhui-registry-key.pem</font>", st["small"]),
        fixed("Verify offline: download this certificate's JSON and the registry's public key, then run "
                  "the command above (or check the Ed25519 signature over the canonical JSON of the "
                  "\"certificate\" object yourself). The digest above must match.", st["small"]),
    ]
    box = Table([[qr_drawing(url), verify_text]], colWidths=[38 * mm, None])
    box.setStyle(TableStyle([
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("BOX", (0, 0), (-1, -1), 0.75, GREEN),
        ("BACKGROUND", (0, 0), (-1, -1), PALE),
    ]))
    story += [Spacer(1, 6 * mm), KeepTogether([Paragraph(f"{mark('证书验证')} Verification", st["h2"]), box])]
    return story


def render_pdf(document: Mapping[str, Any], font_file: str | os.PathLike[str] | None = None) -> bytes:
    """The certificate as an A4 PDF, rendered from the signed document only (deterministic bytes).

    `font_file`: a TrueType font to embed for Chinese (see `cjk_font`); default STSong-Light."""
    c = document["certificate"]
    number = str(c["certificate_number"])
    buf = io.BytesIO()

    def footer(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(LATIN, 7)
        canvas.setFillColor(colors.HexColor("#777777"))
        canvas.drawString(18 * mm, 10 * mm, f"{number} · {document['sha256'][:16]}…")
        canvas.drawRightString(A4[0] - 18 * mm, 10 * mm, f"page {doc.page}")
        canvas.restoreState()

    template = SimpleDocTemplate(
        buf, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm, bottomMargin=18 * mm,
        title=f"碳中和注销证书 Retirement Certificate {number}", author=str(c.get("registry", "")),
        subject=f"{c['beneficiary']} — {tonnes(int(c['quantity_kg']))} t CO2e", invariant=1, lang="zh-CN")
    template.build(build_story(document, font_file), onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()
