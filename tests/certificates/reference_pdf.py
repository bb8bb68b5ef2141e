"""FROZEN: the certificate renderer as it was before our own PDF writer (main 44b84ec,
registry/certificate_pdf.py), kept as the reference the writer's output is compared with
(tests/certificates/test_certificate_pdf_writer.py). Do not change it with the module.

The printable certificate: a bilingual (中文 / English) A4 PDF with a QR code to its public page.

`render_pdf` is built only from a signed document (`registry.certificates.issue_document`), so the
PDF shows exactly what was signed, and it prints the digest and key id that verify it. Rendering is
deterministic (reportlab's invariant mode): the same document gives the same bytes.

Chinese text uses reportlab's built-in CID font STSong-Light (Adobe-GB1): no font file is shipped
or embedded; PDF viewers supply the glyphs. Text is split into runs so Latin characters use
Helvetica and everything else the CID font.

The page is drawn with reportlab's canvas directly, on a fixed layout computed here (the fields
table, the serial ranges table with its head repeated on every page it flows onto, the verification
box with the QR code), and lines are broken here: at spaces, between any two CJK characters (a
closing punctuation mark never starts a line, an opening one never ends it), and inside a word only
when the word alone is wider than the line. reportlab's platypus (Paragraph, Table, KeepTogether)
did the same job at ~7x the CPU, most of it in its CJK line breaking.

Remembered across certificates, none of it changing a byte: each paragraph's lines (`_paragraph`),
each line's text operators as reportlab's text object makes them (`_Pages.draw_line`), and the font
dictionaries (`CIDFont`, `Type1Font`: the Latin fonts are registered under this module's names).
See bench/RESULTS.md, "Offsets".
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from reportlab.lib import colors  # type: ignore[import-untyped]
from reportlab.lib.pagesizes import A4  # type: ignore[import-untyped]
from reportlab.lib.rl_accel import fp_str  # type: ignore[import-untyped]
from reportlab.lib.units import mm  # type: ignore[import-untyped]
from reportlab.pdfbase import pdfdoc, pdfmetrics  # type: ignore[import-untyped]
from reportlab.pdfbase.cidfonts import CIDFontInfo, UnicodeCIDFont, structToPDF  # type: ignore[import-untyped]
from reportlab.pdfbase.pdfmetrics import standardFonts  # type: ignore[import-untyped]
from reportlab.pdfbase.ttfonts import TTFont  # type: ignore[import-untyped]
from reportlab.pdfgen.canvas import Canvas  # type: ignore[import-untyped]

from registry import qr_matrix

CJK = "STSong-Light"
CHINA_TIME = dt.timezone(dt.timedelta(hours=8))  # no DST since 1991


class Ink(colors.Color):  # type: ignore[misc]
    """A reportlab colour hashed and compared by identity: the few colours below are constants,
    and lines of text are remembered by their parts, colour included (reportlab's Color hashes in
    Python)."""

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


def _ink(hex_rgb: str) -> Ink:
    c = colors.HexColor(hex_rgb)
    return Ink(c.red, c.green, c.blue)


GREEN = _ink("#1f6f43")
PALE = _ink("#eef6f0")
BLACK = _ink("#000000")
GREY_LABEL = _ink("#444444")
GREY_FOOTER = _ink("#777777")
RULE_FIELDS = _ink("#cccccc")
RULE_SERIALS = _ink("#dddddd")
LINK = _ink("#0000ff")

PURPOSES = {
    "event_offset": ("活动碳中和", "Event carbon neutrality"),
    "organisational": ("组织碳中和", "Organisational carbon neutrality"),
    "personal": ("个人碳中和", "Personal carbon neutrality"),
    "other": ("其他", "Other"),
}

# The page: A4, the margins of the earlier platypus layout plus its frame's 6 pt padding.
PAGE_W, PAGE_H = A4
LEFT = 18 * mm + 6
WIDTH = PAGE_W - 36 * mm - 12
TOP = PAGE_H - 16 * mm - 6
BOTTOM = 18 * mm + 6
PAD = 6            # a table cell's left and right padding


class _Formatted(pdfdoc.PDFObject):  # type: ignore[misc]
    """A PDF object whose bytes are already known."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def format(self, document: Any) -> bytes:
        return self.data


class CIDFont(UnicodeCIDFont):  # type: ignore[misc]
    """reportlab's UnicodeCIDFont, its font dictionary formatted once per name it is given.

    The dictionary is the same in every document but for its name (/F4): a few thousand glyph
    widths that reportlab turns into PDF objects and formats again for each document (~1 ms of a
    certificate). `addObjects` does what reportlab's does, with the formatted bytes remembered;
    an encrypted document gets reportlab's own objects."""

    def __init__(self, face: str) -> None:
        super().__init__(face)
        self._formatted: dict[str, bytes] = {}

    def addObjects(self, doc: Any) -> None:
        if not isinstance(doc.encrypt, pdfdoc.NoEncryption):
            super().addObjects(doc)
            return
        name = "F" + repr(len(doc.fontMapping) + 1)
        data = self._formatted.get(name)
        if data is None:
            info = dict(CIDFontInfo[self.face.name], Name="/" + name, Encoding="/" + self.encodingName)
            data = self._formatted[name] = pdfdoc.format(structToPDF(info), doc)
        doc.idToObject["BasicFonts"].dict[name] = doc.Reference(_Formatted(data), name)
        doc.fontMapping[self.name] = "/" + name


class _FormattedFont(_Formatted):
    """A font dictionary whose bytes are known; like reportlab's, only ever written by reference."""
    __RefOnly__ = 1


class Type1Font(pdfmetrics.Font):  # type: ignore[misc]
    """One of the standard 14 fonts (not embedded), under a name of this module, its font
    dictionary (with the encoding's glyph name differences) formatted once per name it is given.

    Registered under its own name, so reportlab's "Helvetica" stays reportlab's; the PDF names the
    same base font (/Helvetica) and gets the same bytes (tested). `addObjects` does what
    reportlab's `Font.addObjects` does for a standard font, with the formatted bytes remembered."""

    def __init__(self, name: str, face: str) -> None:
        super().__init__(name, face, "WinAnsiEncoding")
        self._formatted: dict[str, bytes] = {}

    def addObjects(self, doc: Any) -> None:
        if not isinstance(doc.encrypt, pdfdoc.NoEncryption) or standardFonts.__embed__:
            super().addObjects(doc)
            return
        name = "F" + repr(len(doc.fontMapping) + 1)
        data = self._formatted.get(name)
        if data is None:
            font = pdfdoc.PDFType1Font()
            font.Name = name
            font.BaseFont = self.face.name
            font.Encoding = self.encoding.makePDFObject()
            data = self._formatted[name] = font.format(doc)
        obj = _FormattedFont(data)
        doc.Reference(obj, name)
        doc.idToObject["BasicFonts"].dict[name] = obj
        doc.fontMapping[self.fontName] = "/" + name


def _type1(name: str, face: str) -> str:
    if name not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(Type1Font(name, face))
    return name


LATIN = _type1("Tanhui-Helvetica", "Helvetica")
LATIN_BOLD = _type1("Tanhui-Helvetica-Bold", "Helvetica-Bold")
MONO = _type1("Tanhui-Courier", "Courier")


def cjk_font(font_file: str | os.PathLike[str] | None = None) -> str:
    """Register and name the font for Chinese text.

    Without `font_file`: the built-in CID font STSong-Light, not embedded (the viewer supplies the
    glyphs; every desktop OS and Acrobat have them). With a TrueType file (.ttf, or .ttc: its first
    face), e.g. /usr/share/fonts/truetype/wqy/wqy-microhei.ttc from Debian's fonts-wqy-microhei:
    a subset of it is embedded, so the PDF shows the same everywhere.
    """
    if font_file is None:
        if CJK not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(CIDFont(CJK))
        return CJK
    path = os.fspath(font_file)
    name = "CJK-" + hashlib.sha256(path.encode()).hexdigest()[:8]
    if name not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(name, path, subfontIndex=0))
    return name


# ---- text: script runs, widths, line breaking ------------------------------------------------------

def _cp1252() -> str:
    out = []
    for b in range(256):
        try:
            out.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            pass
    return "".join(out)


# What the standard Helvetica (WinAnsi, cp1252) can show, and runs of it or of anything else.
LATIN_CHARS = frozenset(_cp1252())
_CLASS = "".join(sorted(re.escape(ch) for ch in LATIN_CHARS))
_SCRIPT_RUN = re.compile(f"[{_CLASS}]+|[^{_CLASS}]+")


def script_runs(text: str | None) -> list[tuple[bool, str]]:
    """`text` cut into runs of (is Latin, run): Latin runs are set in the span's Latin font, the
    others in the CJK font. "论坛 GBA" -> [(False, "论坛"), (True, " GBA")]."""
    if not text:
        return []
    if text.isascii():
        return [(True, text)]
    return [(run[0] in LATIN_CHARS, run) for run in _SCRIPT_RUN.findall(text)]


class _Widths(dict[str, float]):
    """Advance widths of one font's characters, in points at size 1 (measured once each)."""

    def __init__(self, font_name: str) -> None:
        super().__init__()
        self.font_name = font_name

    def __missing__(self, ch: str) -> float:
        width = self[ch] = pdfmetrics.stringWidth(ch, self.font_name, 1000) / 1000
        return width


_widths: dict[Any, _Widths] = {}


def _widths_of(font_name: str) -> _Widths:
    # Keyed by the registered font object: a font registered again under its name is measured again.
    font = pdfmetrics.getFont(font_name)
    table = _widths.get(font)
    if table is None:
        if len(_widths) >= 64:
            _widths.clear()
        table = _widths[font] = _Widths(font_name)
    return table


def text_width(text: str, font_name: str, size: float) -> float:
    """The width of `text` in one font at `size` points (summed per character; no kerning, as
    reportlab measures)."""
    table = _widths_of(font_name)
    return size * sum(map(table.__getitem__, text))


class Span(NamedTuple):
    """A piece of text in one look: Latin characters in `font`, the others in the CJK font."""
    text: str
    font: str = LATIN
    size: float = 9.5
    color: Any = BLACK
    rise: float = 0.0
    link: str | None = None


class Part(NamedTuple):
    """Text drawn in one font, size, colour and rise (what a line is made of)."""
    text: str
    font: str
    size: float
    color: Any
    rise: float
    link: str | None


@dataclass(frozen=True)
class Lines:
    """A paragraph broken into lines: each line its width and parts; `leading` points apart, the
    first baseline `first` points below the top."""
    lines: tuple[tuple[float, tuple[Part, ...]], ...]
    leading: float
    first: float
    align: str = "left"

    @property
    def height(self) -> float:
        return len(self.lines) * self.leading


NO_LINE_START = frozenset("，。、；：？！）》」』】〕〉”’・…—％,.;:?!)]}%")
NO_LINE_END = frozenset("（《「『【〔〈“‘([{")
_PIECES = re.compile(r"\n| +|[^ \n]+")

_WORD, _SPACE, _NEWLINE = 0, 1, 2


class _Atom:
    """What line breaking moves as a whole: a word (possibly across spans), a space or a newline."""
    __slots__ = ("kind", "parts", "width")

    def __init__(self, kind: int, parts: list[Part], width: float) -> None:
        self.kind, self.parts, self.width = kind, parts, width


def _atoms(spans: Iterable[Span], cjk: str) -> list[_Atom]:
    atoms: list[_Atom] = []
    glue = False     # does a Latin piece here continue the last word (a word across spans)?
    hold = False     # did the last word end with an opening mark (nothing may break after it)?

    def add(text: str, part: Part, width: float, join: bool) -> None:
        last = atoms[-1] if atoms else None
        if join and last is not None and last.kind == _WORD:
            prev = last.parts[-1]
            if prev[1:] == part[1:]:
                last.parts[-1] = prev._replace(text=prev.text + text)
            else:
                last.parts.append(part)
            last.width += width
        else:
            atoms.append(_Atom(_WORD, [part], width))

    for span in spans:
        for latin, run in script_runs(span.text):
            font = span.font if latin else cjk
            table = _widths_of(font)
            size = span.size
            if latin:
                for piece in _PIECES.findall(run):
                    if piece == "\n":
                        atoms.append(_Atom(_NEWLINE, [], 0.0))
                        glue = hold = False
                        continue
                    if piece[0] == " ":
                        piece = " "   # runs of spaces show as one, as in reportlab's paragraphs
                    width = size * sum(map(table.__getitem__, piece))
                    part = Part(piece, font, size, span.color, span.rise, span.link)
                    if piece == " ":
                        atoms.append(_Atom(_SPACE, [part], width))
                        glue = hold = False
                    else:
                        add(piece, part, width, glue or hold or piece[0] in NO_LINE_START)
                        glue, hold = True, piece[-1] in NO_LINE_END
            else:
                for ch in run:
                    if ch == "\n":
                        atoms.append(_Atom(_NEWLINE, [], 0.0))
                        glue = hold = False
                        continue
                    add(ch, Part(ch, font, size, span.color, span.rise, span.link), size * table[ch],
                        hold or ch in NO_LINE_START)
                    glue, hold = False, ch in NO_LINE_END
    return atoms


def _split_word(atom: _Atom, width: float) -> list[_Atom]:
    """A word wider than the line, cut between characters into pieces that fit (at least one
    character each)."""
    pieces: list[_Atom] = []
    parts: list[Part] = []
    used = 0.0
    for part in atom.parts:
        table = _widths_of(part.font)
        start = 0
        for i, ch in enumerate(part.text):
            w = part.size * table[ch]
            if used + w > width and (parts or i > start):
                if i > start:
                    parts.append(part._replace(text=part.text[start:i]))
                pieces.append(_Atom(_WORD, parts, used))
                parts, used, start = [], 0.0, i
            used += w
        if start < len(part.text):
            parts.append(part._replace(text=part.text[start:]))
    if parts:
        pieces.append(_Atom(_WORD, parts, used))
    return pieces


def _merged(atoms: list[_Atom]) -> tuple[Part, ...]:
    out: list[Part] = []
    for atom in atoms:
        for part in atom.parts:
            if out and out[-1][1:] == part[1:]:
                out[-1] = out[-1]._replace(text=out[-1].text + part.text)
            else:
                out.append(part)
    return tuple(out)


def _greedy(spans: Iterable[Span], width: float, cjk: str) -> list[tuple[float, tuple[Part, ...]]]:
    """Greedy line breaking, atom by atom (words, spaces, CJK characters)."""
    lines: list[tuple[float, tuple[Part, ...]]] = []
    line: list[_Atom] = []
    used = 0.0
    space: _Atom | None = None
    limit = width + 1e-6

    def flush() -> None:
        nonlocal line, used
        lines.append((used, _merged(line)))
        line, used = [], 0.0

    for atom in _atoms(spans, cjk):
        if atom.kind == _NEWLINE:
            flush()
            space = None
            continue
        if atom.kind == _SPACE:
            if line:
                space = atom
            continue
        gap = space.width if space is not None else 0.0
        if line and used + gap + atom.width <= limit:
            if space is not None:
                line.append(space)
            line.append(atom)
            used += gap + atom.width
            space = None
            continue
        if line:
            flush()
        space = None
        pieces = _split_word(atom, width) if atom.width > limit else [atom]
        for piece in pieces[:-1]:
            line, used = [piece], piece.width
            flush()
        line, used = [pieces[-1]], pieces[-1].width
    if line or not lines:
        flush()
    return lines


def _one_line(spans: list[Span], limit: float, cjk: str) -> tuple[float, tuple[Part, ...]] | None:
    """The line of `spans` (no newline in them) when it fits in `limit` as it is and needs no
    space dropped or collapsed, else None. Most of a certificate's lines are such lines."""
    text = "".join(span.text for span in spans)
    if not text:
        return 0.0, ()
    if text[0] == " " or text[-1] == " " or "  " in text:
        return None
    parts: list[Part] = []
    used = 0.0
    for span in spans:
        for latin, run in script_runs(span.text):
            font = span.font if latin else cjk
            used += span.size * sum(map(_widths_of(font).__getitem__, run))
            if used > limit:
                return None
            part = Part(run, font, span.size, span.color, span.rise, span.link)
            if parts and parts[-1][1:] == part[1:]:
                parts[-1] = part._replace(text=parts[-1].text + run)
            else:
                parts.append(part)
    return used, tuple(parts)


# Control characters have no glyph (reportlab would set them in a substitution font): a tab shows
# as a space, the others are dropped; "\n" breaks a line.
_CONTROLS = {**{c: None for c in (*range(32), 127) if c != 10}, 9: " "}


def break_lines(spans: Iterable[Span], width: float, cjk: str = CJK) -> list[tuple[float, tuple[Part, ...]]]:
    """Greedy line breaking of `spans` into lines at most `width` points wide (a word wider than
    a line is cut between characters). Each line: (its width, its parts). Spaces at the ends of
    lines are dropped and runs of spaces show as one; "\\n" breaks a line, a tab is a space and
    other control characters are dropped."""
    hard: list[list[Span]] = [[]]
    for span in spans:
        if not span.text.isprintable():
            span = span._replace(text=span.text.translate(_CONTROLS))
        if "\n" in span.text:
            for i, piece in enumerate(span.text.split("\n")):
                if i:
                    hard.append([])
                if piece:
                    hard[-1].append(span._replace(text=piece))
        elif span.text:
            hard[-1].append(span)
    lines: list[tuple[float, tuple[Part, ...]]] = []
    limit = width + 1e-6
    for line_spans in hard:
        line = _one_line(line_spans, limit, cjk)
        if line is not None:
            lines.append(line)
        else:
            lines.extend(_greedy(line_spans, width, cjk))
    return lines


def paragraph(spans: Iterable[Span], width: float, leading: float, first: float, cjk: str = CJK,
              align: str = "left") -> Lines:
    """`spans` broken into lines `width` points wide, `leading` apart, the first baseline `first`
    points below the top (the font size, as reportlab places a paragraph). Remembered: the same
    texts recur from certificate to certificate (names, projects, methodologies, the notes)."""
    return _paragraph(tuple(spans), width, leading, first, cjk, align)


@functools.lru_cache(maxsize=4096)
def _paragraph(spans: tuple[Span, ...], width: float, leading: float, first: float, cjk: str, align: str) -> Lines:
    return Lines(tuple(break_lines(spans, width, cjk)), leading, first, align)


# ---- numbers and times -------------------------------------------------------------------------------


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


# ---- the QR code -------------------------------------------------------------------------------------

QUIET_ZONE = 4  # modules of white around the symbol, as ISO/IEC 18004 asks


class QrCode:
    """A QR code (error correction M) of `value`, `size` points square, quiet zone included.

    The module matrix is segno's (`registry.qr_matrix` makes it, faster); each row of modules is
    drawn as one dashed line whose dashes are its dark runs (see `draw`)."""

    def __init__(self, value: str, size: float = 34 * mm) -> None:
        self.value = value
        self.size = size
        self.matrix = [bytes(row) for row in qr_matrix.matrix(value)]

    def dashes(self) -> list[tuple[int, int, int, list[int]]]:
        """Each row with dark modules as one dashed line: (row, first dark column, last dark column
        + 1, the dash array: dark run, light gap, dark run, ..., a last gap of 1 that is never drawn)."""
        out = []
        for y, row in enumerate(self.matrix):
            first = row.find(1)
            if first < 0:
                continue
            last = row.rfind(1) + 1
            out.append((y, first, last, [*map(len, _ALTERNATING.findall(row, first, last)), 1]))
        return out

    def draw(self, canvas: Any, x: float, y: float) -> None:
        """Draw the symbol with its lower left corner (quiet zone included) at (x, y).

        In module units (integers), scaled and flipped onto the page: each row of modules is one
        line one module wide, dashed so that the dashes are exactly its dark runs (butt caps, so a
        dash ends where its run does). One dash setting and one line per row cost reportlab much
        less than a rectangle per run (~300)."""
        m = self.size / (len(self.matrix) + 2 * QUIET_ZONE)
        canvas.saveState()
        canvas.translate(x + QUIET_ZONE * m, y + self.size - QUIET_ZONE * m)
        canvas.scale(m, -m)
        canvas.setStrokeColor(BLACK)
        canvas.setLineWidth(1)
        canvas.setLineCap(0)
        for row, first, last, dash in self.dashes():
            canvas.setDash(dash, 0)
            canvas.line(first, row + 0.5, last, row + 0.5)
        canvas.restoreState()


_ALTERNATING = re.compile(rb"\x01+|\x00+")


def verification_qr(document: Mapping[str, Any]) -> QrCode:
    """The QR code the certificate shows: its public verification page."""
    return QrCode(str(document["certificate"]["verification_url"]))


# ---- pages -------------------------------------------------------------------------------------------


_line_code: dict[tuple[Any, ...], str] = {}
_AT_ORIGIN = "BT 1 0 0 1 0 0 Tm"
_LINE_CODE_LIMIT = 1 << 14


class _Pages:
    """The canvas and a cursor going down the page; a new page when a block does not fit.

    Each line of text is drawn where it stands in the reading order, as the text operators
    reportlab's text object makes for it at the origin, moved into place. Those operators depend
    only on the line's parts and on the names the document gives its fonts (/F1, /F2, ...), which
    are the same in every certificate because the fonts are registered in one order when the canvas
    is made; so they are remembered by both and a line seen before (labels, headings, column heads,
    the notes, and any repeated value) costs one literal instead of a text object. Lines with a font
    that embeds a subset (a TrueType CJK font) depend on the document's subset and are never kept."""

    def __init__(self, canvas: Any, footer_left: str, fonts: tuple[str, ...]) -> None:
        self.canvas = canvas
        self.footer_left = footer_left
        self.page = 1
        self.y = TOP
        doc = canvas._doc   # reportlab's document: registering a font there names it (/F1, ...)
        self.dynamic = frozenset(f for f in fonts if pdfmetrics.getFont(f)._dynamicFont)
        self.names = {font: doc.getInternalFontName(font) for font in fonts if font not in self.dynamic}
        self.names_key = tuple(sorted(self.names.items()))
        self._stroke: tuple[Any, float] | None = None

    def fits(self, height: float) -> bool:
        return self.y - height >= BOTTOM - 1e-6

    def at_top(self) -> bool:
        return self.y >= TOP - 1e-6

    def need(self, height: float) -> bool:
        """Start a new page unless `height` fits below the cursor; True when it did."""
        if self.fits(height) or self.at_top():
            return False
        self.new_page()
        return True

    def finish_page(self) -> None:
        c = self.canvas
        c.setFont(LATIN, 7)
        c.setFillColor(GREY_FOOTER)
        c.drawString(18 * mm, 10 * mm, self.footer_left)
        c.drawRightString(PAGE_W - 18 * mm, 10 * mm, f"page {self.page}")

    def new_page(self) -> None:
        self.finish_page()
        self.canvas.showPage()
        self.page += 1
        self.y = TOP
        self._stroke = None

    def _text_object(self, parts: tuple[Part, ...], x: float, y: float) -> Any:
        t = self.canvas.beginText(x, y)
        font, size, color = "", 0.0, None
        for part in parts:
            if part.font != font or part.size != size:
                font, size = part.font, part.size
                t.setFont(font, size)
            if part.color is not color:
                color = part.color
                t.setFillColor(color)
            if part.rise:
                t.setRise(part.rise)
                t.textOut(part.text)
                t.setRise(0)
            else:
                t.textOut(part.text)
        return t

    def draw_line(self, parts: tuple[Part, ...], x: float, y: float) -> None:
        if not parts:
            return
        canvas = self.canvas
        if self.dynamic and any(part.font in self.dynamic for part in parts):
            canvas.drawText(self._text_object(parts, x, y))
        else:
            key = (parts, self.names_key)
            code = _line_code.get(key)
            if code is None:
                fonts = len(canvas._doc.fontMapping)
                code = self._text_object(parts, 0, 0).getCode()
                # Kept only if it named no font beyond the registered ones (no substitution font).
                if len(canvas._doc.fontMapping) == fonts:
                    if len(_line_code) >= _LINE_CODE_LIMIT:
                        _line_code.clear()
                    _line_code[key] = code
            if code.startswith(_AT_ORIGIN):
                canvas.addLiteral(f"BT 1 0 0 1 {fp_str(x, y)} Tm{code[len(_AT_ORIGIN):]}")
            else:
                canvas.addLiteral(f"q 1 0 0 1 {fp_str(x, y)} cm {code} Q")
        for i, part in enumerate(parts):
            if part.link:
                x0 = x + sum(text_width(p.text, p.font, p.size) for p in parts[:i])
                x1 = x0 + text_width(part.text, part.font, part.size)
                canvas.linkURL(part.link, (x0, y - 0.2 * part.size, x1, y + 0.8 * part.size), relative=0)

    def draw_lines(self, lines: Lines, x: float, top: float, width: float,
                   start: int = 0, stop: int | None = None) -> None:
        """Lines `start:stop` of a paragraph, the first of them `lines.first` below `top`."""
        baseline = top - lines.first
        for line_width, parts in lines.lines[start:stop]:
            if lines.align == "center":
                lx = x + (width - line_width) / 2
            elif lines.align == "right":
                lx = x + width - line_width
            else:
                lx = x
            self.draw_line(parts, lx, baseline)
            baseline -= lines.leading

    def rule(self, x1: float, x2: float, y: float, width: float, color: Any) -> None:
        c = self.canvas
        if self._stroke != (color, width):
            c.setStrokeColor(color)
            c.setLineWidth(width)
            self._stroke = (color, width)
        c.line(x1, y, x2, y)

    def fill(self, x: float, y: float, w: float, h: float, color: Any) -> None:
        self.canvas.setFillColor(color)
        self.canvas.rect(x, y, w, h, stroke=0, fill=1)


# ---- the certificate's parts -------------------------------------------------------------------------

LABEL_COL = 32 * mm
VALUE_W = WIDTH - LABEL_COL - 2 * PAD
SERIAL_COLS = (52 * mm, 48 * mm, 14 * mm, 36 * mm, WIDTH - 150 * mm)
BOX_QR_COL = 38 * mm
BOX_TEXT_W = WIDTH - BOX_QR_COL - 2 * PAD
QR_SIZE = 34 * mm


def _zh_en(zh: str, en: str, size: float, color: Any = BLACK) -> list[Span]:
    return [Span(zh, LATIN, size, color), Span("\n"), Span(en, LATIN, size, color)]


@functools.lru_cache(maxsize=256)
def _fixed(key: str, cjk: str) -> Lines:
    """The paragraphs that are the same on every certificate, broken once per CJK font."""
    if key == "title_zh":
        return paragraph([Span("碳中和注销证书", cjk, 26, GREEN)], WIDTH, 34, 26, cjk, "center")
    if key == "title_en":
        return paragraph([Span("Retirement Certificate", LATIN_BOLD, 15, GREEN)], WIDTH, 20, 15, cjk, "center")
    if key == "offline_en":
        return paragraph([Span(
            "Verify offline: download this certificate's JSON and the registry's public key, then run the "
            "command above (or check the Ed25519 signature over the canonical JSON of the \"certificate\" "
            "object yourself). The digest above must match.", LATIN, 7.5)], BOX_TEXT_W, 9.5, 7.5, cjk)
    if key.startswith("h2:"):
        zh, en = key[3:].split("|")
        return paragraph([Span(zh + " ", LATIN_BOLD, 10.5, GREEN), Span(en, LATIN_BOLD, 10.5, GREEN)],
                         WIDTH, 15, 10.5, cjk)
    if key.startswith("label:"):
        zh, en = key[6:].split("|")
        return paragraph(_zh_en(zh, en, 8.5, GREY_LABEL), LABEL_COL - 2 * PAD, 11, 8.5, cjk)
    if key.startswith("head:"):
        i, zh, en = key[5:].split("|")
        return paragraph(_zh_en(zh, en, 7.5), SERIAL_COLS[int(i)] - 2 * PAD, 9.5, 7.5, cjk)
    if key == "total":
        return paragraph([Span("合计 Total", LATIN, 7.5)], SERIAL_COLS[3] - 2 * PAD, 9.5, 7.5, cjk)
    raise KeyError(key)


SERIAL_HEADS = (("序列号", "Serial"), ("项目", "Project"), ("年份", "Vintage"), ("方法学", "Methodology"),
                ("数量", "kg"))


class _Row(NamedTuple):
    cells: tuple[Lines | None, ...]
    height: float


def _row(cells: tuple[Lines | None, ...], top_pad: float, bottom_pad: float) -> _Row:
    return _Row(cells, max(c.height for c in cells if c is not None) + top_pad + bottom_pad)


def _draw_row(pages: _Pages, row: _Row, cols: Iterable[float], top_pad: float) -> None:
    x = LEFT
    for cell, col in zip(row.cells, cols, strict=True):
        if cell is not None:
            pages.draw_lines(cell, x + PAD, pages.y - top_pad, col - 2 * PAD)
        x += col


def _split_row(row: _Row, room: float, top_pad: float, bottom_pad: float) -> tuple[_Row, _Row] | None:
    """A row taller than a whole page, cut between lines: the part that fits in `room`, and the rest."""
    first_cells: list[Lines | None] = []
    rest_cells: list[Lines | None] = []
    for cell in row.cells:
        if cell is None:
            first_cells.append(None)
            rest_cells.append(None)
            continue
        n = max(int((room - top_pad - bottom_pad) // cell.leading), 0)
        first_cells.append(Lines(cell.lines[:n], cell.leading, cell.first, cell.align))
        rest_cells.append(Lines(cell.lines[n:], cell.leading, cell.first, cell.align))
    if all(c is None or not c.lines for c in first_cells):
        return None
    def height(cells: list[Lines | None]) -> float:
        return max((c.height for c in cells if c is not None), default=0.0) + top_pad + bottom_pad
    return _Row(tuple(first_cells), height(first_cells)), _Row(tuple(rest_cells), height(rest_cells))


def _fields(c: Mapping[str, Any], cjk: str) -> list[_Row]:
    qty = int(c["quantity_kg"])
    purpose_zh, purpose_en = PURPOSES.get(str(c["purpose"]), (str(c["purpose"]), str(c["purpose"])))
    utc, china = times(str(c["retired_at"]))
    retired_by = c.get("retired_by") or {}

    def value(text: str, size: float = 10, leading: float = 13.5) -> Lines:
        return paragraph([Span(text, LATIN, size)], VALUE_W, leading, size, cjk)

    big = functools.partial(Span, font=LATIN_BOLD, size=13, color=GREEN)
    rows = [
        ("受益方|Beneficiary", paragraph([big(str(c["beneficiary"]))], VALUE_W, 17, 13, cjk)),
        ("注销数量|Quantity", paragraph(
            [big(f"{tonnes(qty)} t CO"), big("2", size=11, rise=-6.5), big("e"),
             Span(f" ({qty:,} kg)", LATIN_BOLD, 13, GREEN)], VALUE_W, 17, 13, cjk)),
        ("用途|Purpose", value(f"{purpose_zh} / {purpose_en}")),
        ("适用地域|Jurisdiction", value(str(c["jurisdiction"]))),
        ("注销方|Retired by", value(str(retired_by.get("name", "")))),
        ("留言|Message", value(str(c.get("message") or "—"))),
        ("碳足迹|Footprint", value(str(c.get("footprint_ref") or "—"))),
        ("注销时间|Retired at", value(f"{utc}\n{china}")),
    ]
    return [_row((_fixed("label:" + label, cjk), cell), 3, 4) for label, cell in rows]


def _serial_rows(c: Mapping[str, Any], cjk: str) -> list[_Row]:
    widths = [w - 2 * PAD for w in SERIAL_COLS]
    rows = []
    for s in c["serials"]:
        p, m = s["project"], s["methodology"]
        project = str(p.get("title", ""))
        if p.get("title_en"):
            project += "\n" + str(p["title_en"])
        rows.append(_row((
            paragraph([Span(str(s["serial"]), MONO, 7.5)], widths[0], 9.5, 7.5, cjk),
            paragraph([Span(project + "\n", LATIN, 7.5), Span(f"#{p.get('code', p.get('id'))}", LATIN, 6.5)],
                      widths[1], 9.5, 7.5, cjk),
            paragraph([Span(str(int(s["vintage"])), LATIN, 7.5)], widths[2], 9.5, 7.5, cjk),
            paragraph([Span(f"{m['code']} v{m['version']}\n{m.get('title_zh') or ''}", LATIN, 7.5)],
                      widths[3], 9.5, 7.5, cjk),
            paragraph([Span(f"{int(s['quantity_kg']):,}", LATIN, 7.5)], widths[4], 9.5, 7.5, cjk, "right"),
        ), 3, 3))
    return rows


def _verify_text(document: Mapping[str, Any], cjk: str) -> list[Lines | float]:
    c = document["certificate"]
    url = str(c["verification_url"])
    key_url = str(c.get("public_key_url", ""))
    number = str(c["certificate_number"])

    def small(*spans: Span) -> Lines:
        return paragraph(spans, BOX_TEXT_W, 9.5, 7.5, cjk)

    key_line = [Span(f"{document['algorithm']} key id: ", LATIN, 7.5), Span(str(document["key_id"]), MONO, 7.5)]
    if key_url:
        key_line.append(Span(f" — 公钥 public key: {key_url}", LATIN, 7.5))
    return [
        small(Span("验证 Verify: ", LATIN, 7.5), Span(url, LATIN, 7.5, LINK, link=url)),
        small(Span("SHA-256: ", LATIN, 7.5), Span(str(document["sha256"]), MONO, 7.5)),
        small(*key_line),
        2 * mm,
        small(Span("离线验证：下载本证书的 JSON 文件和登记簿公钥，运行 ", LATIN, 7.5),
              Span(f"flask registry verify-certificate {number}.json --public-key tanhui-registry-key.pem",
                   MONO, 7.5)),
        _fixed("offline_en", cjk),
    ]


def _draw(pages: _Pages, document: Mapping[str, Any], cjk: str) -> None:
    c = document["certificate"]
    number = str(c["certificate_number"])
    beneficiary = str(c["beneficiary"])

    def block(lines: Lines, space_after: float = 0.0) -> None:
        """A paragraph across the page's width, flowing over pages line by line."""
        done = 0
        while done < len(lines.lines):
            room = int((pages.y - BOTTOM + 1e-6) // lines.leading)
            if room <= 0:
                pages.new_page()
                continue
            take = min(room, len(lines.lines) - done)
            pages.draw_lines(lines, LEFT, pages.y, WIDTH, done, done + take)
            pages.y -= take * lines.leading
            done += take
        pages.y -= space_after

    def heading(key: str) -> None:
        lines = _fixed(key, cjk)
        if not pages.at_top():
            pages.y -= 8
        pages.draw_lines(lines, LEFT, pages.y, WIDTH)
        pages.y -= lines.height + 3

    block(paragraph([Span(str(c.get("registry", "")), LATIN, 8)], WIDTH, 10, 8, cjk, "right"), 4 * mm)
    block(_fixed("title_zh", cjk))
    block(_fixed("title_en", cjk), 3 * mm)
    block(paragraph([Span("证书编号 Certificate No. ", LATIN, 9.5), Span(number, LATIN_BOLD, 9.5)],
                    WIDTH, 13, 9.5, cjk, "center"), 4 * mm)
    block(paragraph([Span(f"兹证明下列减排量已在登记簿中永久注销，归属于 {beneficiary}，不可再转让或使用。", LATIN, 9.5)],
                    WIDTH, 13, 9.5, cjk))
    block(paragraph([Span("This certifies that the carbon credits below were permanently retired in the registry "
                          f"on behalf of {beneficiary}; they can never be transferred or used again.", LATIN, 9.5)],
                    WIDTH, 13, 9.5, cjk), 4 * mm)

    fields = _fields(c, cjk)
    cols = (LABEL_COL, WIDTH - LABEL_COL)
    for i, row in enumerate(fields):
        _place_row(pages, row, cols, 3, 4)
        if i < len(fields) - 1:
            pages.rule(LEFT, LEFT + WIDTH, pages.y, 0.25, RULE_FIELDS)

    heading("h2:注销序列号|Retired serial ranges")
    _draw_serials(pages, c, cjk)

    verify = _verify_text(document, cjk)
    text_h = sum(v if isinstance(v, float) else v.height for v in verify)
    box_h = max(QR_SIZE, text_h) + 6
    pages.y -= 6 * mm
    h2 = _fixed("h2:证书验证|Verification", cjk)
    pages.need(8 + h2.height + 3 + box_h)   # the heading and the box together (KeepTogether)
    heading("h2:证书验证|Verification")
    bottom = pages.y - box_h
    pages.fill(LEFT, bottom, WIDTH, box_h, PALE)
    canvas = pages.canvas
    canvas.setStrokeColor(GREEN)
    canvas.setLineWidth(0.75)
    canvas.rect(LEFT, bottom, WIDTH, box_h, stroke=1, fill=0)
    pages._stroke = None   # set here, not by `rule`
    # VALIGN MIDDLE, as reportlab's table places a cell: padding 3 above and below.
    qr_top = bottom + (box_h + 3 - 3 + QR_SIZE) / 2
    verification_qr(document).draw(canvas, LEFT + PAD, qr_top - QR_SIZE)
    top = bottom + (box_h + 3 - 3 + text_h) / 2
    for v in verify:
        if isinstance(v, float):
            top -= v
            continue
        pages.draw_lines(v, LEFT + BOX_QR_COL + PAD, top, BOX_TEXT_W)
        top -= v.height
    pages.y = bottom


def _place_row(pages: _Pages, row: _Row, cols: tuple[float, ...], top_pad: float, bottom_pad: float,
               on_new_page: Callable[[], None] = lambda: None) -> None:
    """Draw a table row below the cursor: on this page, else on a new one (`on_new_page` draws what
    a continued table repeats); a row taller than a whole page is cut between lines."""
    fresh = pages.at_top()
    while True:
        if pages.fits(row.height):
            break
        if not fresh:
            pages.new_page()
            on_new_page()
            fresh = True
            continue
        cut = _split_row(row, pages.y - BOTTOM, top_pad, bottom_pad)
        if cut is None:
            break   # not even one line fits: draw it anyway, below the margin
        _draw_row(pages, cut[0], cols, top_pad)
        pages.new_page()
        on_new_page()
        row = cut[1]
    _draw_row(pages, row, cols, top_pad)
    pages.y -= row.height


def _draw_serials(pages: _Pages, c: Mapping[str, Any], cjk: str) -> None:
    head = _row(tuple(_fixed(f"head:{i}|{zh}|{en}", cjk) for i, (zh, en) in enumerate(SERIAL_HEADS)), 3, 3)
    total = _row((None, None, None, _fixed("total", cjk),
                  paragraph([Span(f"{int(c['quantity_kg']):,}", LATIN_BOLD, 7.5)], SERIAL_COLS[4] - 2 * PAD,
                            9.5, 7.5, cjk, "right")), 3, 3)
    rows = _serial_rows(c, cjk)
    right = LEFT + WIDTH

    def draw_head() -> None:
        pages.fill(LEFT, pages.y - head.height, WIDTH, head.height, PALE)
        _draw_row(pages, head, SERIAL_COLS, 3)
        pages.y -= head.height
        pages.rule(LEFT, right, pages.y, 0.5, GREEN)

    pages.need(head.height + (rows[0].height if rows else 0))
    draw_head()
    for row in rows:
        _place_row(pages, row, SERIAL_COLS, 3, 3, draw_head)
        pages.rule(LEFT, right, pages.y, 0.25, RULE_SERIALS)
    if not pages.fits(total.height):
        pages.new_page()
        draw_head()
    pages.rule(LEFT, right, pages.y, 0.5, GREEN)
    _draw_row(pages, total, SERIAL_COLS, 3)
    pages.y -= total.height


def render_pdf(document: Mapping[str, Any], font_file: str | os.PathLike[str] | None = None) -> bytes:
    """The certificate as an A4 PDF, rendered from the signed document only (deterministic bytes).

    `font_file`: a TrueType font to embed for Chinese (see `cjk_font`); default STSong-Light."""
    cjk = cjk_font(font_file)
    c = document["certificate"]
    number = str(c["certificate_number"])
    buf = io.BytesIO()
    canvas = Canvas(buf, pagesize=A4, invariant=1, lang="zh-CN", initialFontName=LATIN)
    canvas.setTitle(f"碳中和注销证书 Retirement Certificate {number}")
    canvas.setAuthor(str(c.get("registry", "")))
    canvas.setSubject(f"{c['beneficiary']} — {tonnes(int(c['quantity_kg']))} t CO2e")
    pages = _Pages(canvas, f"{number} · {document['sha256'][:16]}…", (LATIN, LATIN_BOLD, MONO, cjk))
    _draw(pages, document, cjk)
    pages.finish_page()
    canvas.showPage()
    canvas.save()
    return buf.getvalue()
