"""The printable certificate: a bilingual (中文 / English) A4 PDF with a QR code to its public page.

`render_pdf` is built only from a signed document (`registry.certificates.issue_document`), so the
PDF shows exactly what was signed, and it prints the digest and key id that verify it. Rendering is
deterministic: the same document gives the same bytes.

Chinese text uses reportlab's built-in CID font STSong-Light (Adobe-GB1): no font file is shipped
or embedded; PDF viewers supply the glyphs. Text is split into runs so Latin characters use
Helvetica and everything else the CID font.

The layout is computed here (the fields table, the serial ranges table with its head repeated on
every page it flows onto, the verification box with the QR code), and lines are broken here: at
spaces, between any two CJK characters (a closing punctuation mark never starts a line, an opening
one never ends it), and inside a word only when the word alone is wider than the line. reportlab's
platypus (Paragraph, Table, KeepTogether) did the same job at ~7x the CPU, most of it in its CJK
line breaking.

The file is written here too (`_Writer`), for the built-in fonts: reportlab's canvas and document
writer (text objects, `PDFObject.format`, `PDFName`, `fp_str` on every number, ASCII85) cost ~1.3 ms
of the ~1.6 ms a certificate took even with the fonts formatted once, ~2.4-2.8 ms in the offset
benchmark's order loop. `_Writer` writes the content operators exactly as reportlab's canvas and
text object write them (with reportlab's C helpers `fp_str` and `escapePDF`; the tests compare the
inflated content streams byte for byte with reportlab's, and poppler's text and metadata), and
emits a fixed set of objects: the font resources and the four font dictionaries (reportlab's own
bytes, formatted once per process), the catalog, the page tree, the info dictionary, each page with
its deflated content stream and its link, the cross-reference table. With a TrueType font for
Chinese (`font_file`: embedded as subsets, which reportlab writes and we would only get wrong) the
same layout draws on reportlab's canvas (`_CanvasOut`); both paths are tested against each other.

Remembered across certificates, none of it changing a byte: each paragraph's lines (`_paragraph`)
and a span's atoms (`_span_atoms`), each line's text operators (`line_code`), what was written for
a paragraph where it was drawn (`Lines.drawn`), the fixed objects (`_fixed_objects`) and, for the
canvas path, the font dictionaries (`CIDFont`, `Type1Font`: the Latin fonts are registered under
this module's names). A certificate now costs ~0.55 ms alone (~0.25 ms of it the QR code) and
~1.1-1.3 ms in the benchmark's order loop on a loaded machine, against ~1.6 and ~2.4-2.8 ms with
reportlab's canvas. See bench/RESULTS.md, "Offsets".
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from reportlab.lib import colors  # type: ignore[import-untyped]
from reportlab.lib.pagesizes import A4  # type: ignore[import-untyped]
from reportlab.lib.rl_accel import escapePDF, fp_str  # type: ignore[import-untyped]
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
            data = self._formatted[name] = _cid_dict(self.face.name, name, doc, self.encodingName)
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
            data = self._formatted[name] = _type1_dict(self.face.name, name, doc, self.encoding)
        obj = _FormattedFont(data)
        doc.Reference(obj, name)
        doc.idToObject["BasicFonts"].dict[name] = obj
        doc.fontMapping[self.fontName] = "/" + name


def _cid_dict(face: str, name: str, doc: Any, encoding: str = "UniGB-UCS2-H") -> bytes:
    """The font dictionary of a built-in CID font as reportlab's UnicodeCIDFont formats it."""
    info = dict(CIDFontInfo[face], Name="/" + name, Encoding="/" + encoding)
    data: bytes = pdfdoc.format(structToPDF(info), doc)
    return data


def _type1_dict(face: str, name: str, doc: Any, encoding: Any = None) -> bytes:
    """The font dictionary of a standard font (not embedded) as reportlab's Font formats it."""
    font = pdfdoc.PDFType1Font()
    font.Name = name
    font.BaseFont = face
    font.Encoding = (encoding or pdfmetrics.getEncoding("WinAnsiEncoding")).makePDFObject()
    data: bytes = font.format(doc)
    return data


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
    first baseline `first` points below the top. `drawn`: what `_Writer` wrote for it where it
    was drawn (`_Pages.draw_lines`), remembered with it."""
    lines: tuple[tuple[float, tuple[Part, ...]], ...]
    leading: float
    first: float
    align: str = "left"
    drawn: dict[tuple[float, ...], tuple[tuple[str, ...], tuple[str, ...]]] = field(
        default_factory=dict, compare=False, repr=False)

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
    for span in spans:
        if not glue and not hold and (not atoms or atoms[-1].kind != _WORD):
            # Nothing of this span joins what came before: its atoms are the span's alone.
            cached, glue, hold = _span_atoms(span, cjk)
            atoms.extend(cached)
        else:
            glue, hold = _add_span(atoms, span, cjk, glue, hold)
    return atoms


@functools.lru_cache(maxsize=2048)
def _span_atoms(span: Span, cjk: str) -> tuple[tuple[_Atom, ...], bool, bool]:
    """The atoms of a span that starts afresh, and the state after it; remembered, as spans recur
    next to others that do not (the offline note before a certificate's number). Shared: an atom
    is copied before a later span joins it (`_add_span`)."""
    atoms: list[_Atom] = []
    glue, hold = _add_span(atoms, span, cjk, False, False)
    return tuple(atoms), glue, hold


def _add_span(atoms: list[_Atom], span: Span, cjk: str, glue: bool, hold: bool) -> tuple[bool, bool]:
    def add(text: str, part: Part, width: float, join: bool) -> None:
        last = atoms[-1] if atoms else None
        if join and last is not None and last.kind == _WORD:
            last = atoms[-1] = _Atom(_WORD, [*last.parts], last.width)   # it may be a remembered one
            prev = last.parts[-1]
            if prev[1:] == part[1:]:
                last.parts[-1] = prev._replace(text=prev.text + text)
            else:
                last.parts.append(part)
            last.width += width
        else:
            atoms.append(_Atom(_WORD, [part], width))

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
    return glue, hold


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
    texts: list[str] = []
    look: tuple[Any, ...] | None = None
    for atom in atoms:
        for part in atom.parts:
            key = part[1:]
            if key != look:
                if look is not None:
                    out.append(Part("".join(texts), *look))
                texts, look = [], key
            texts.append(part.text)
    if look is not None:
        out.append(Part("".join(texts), *look))
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
    m = _RETIRED_AT.fullmatch(retired_at)
    if m is not None:   # the registry's own form, read without strptime (~14 us -> ~3 us)
        year, month, day, hour, minute, second = map(int, m.groups())
        t = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    else:
        t = dt.datetime.strptime(retired_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return _clock(t) + " UTC", _clock(t.astimezone(CHINA_TIME)) + " 北京时间 China time (UTC+8)"


_RETIRED_AT = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")


def _clock(t: dt.datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"


# ---- the QR code -------------------------------------------------------------------------------------

QUIET_ZONE = 4  # modules of white around the symbol, as ISO/IEC 18004 asks


class QrCode:
    """A QR code (error correction M) of `value`, `size` points square, quiet zone included.

    The module matrix is segno's (`registry.qr_matrix` makes it, faster); each row of modules is
    drawn as one dashed line whose dashes are its dark runs (see `draw`)."""

    def __init__(self, value: str, size: float = 34 * mm) -> None:
        self.value = value
        self.size = size
        self.matrix = qr_matrix.matrix(value)

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

    def operators(self, x: float, y: float) -> list[str]:
        """The operators `draw` has reportlab's canvas write, written here (tested the same).

        The dash arrays of all rows come from one string: the rows' modules as letters, a space
        where the colour changes, each run looked up by its letters: ~0.07 ms for a version 5
        symbol, where a dash array by row as `dashes` makes it took ~0.12 ms."""
        m = self.size / (len(self.matrix) + 2 * QUIET_ZONE)
        # reportlab merges the translation and the scaling into one matrix, from the translation
        # as it formatted it.
        tx, ty = (float(v) for v in fp_str(x + QUIET_ZONE * m, y + self.size - QUIET_ZONE * m).split())
        out = ["q", f"{fp_str(m, 0, 0, -m, tx, ty)} cm", "0 0 0 RG", "1 w", "0 J"]
        rows: list[tuple[str, int, int]] = []
        dark: list[bytearray] = []
        for row, modules in enumerate(self.matrix):
            first = modules.find(1)
            if first < 0:
                continue
            last = modules.rfind(1) + 1
            rows.append((_ROW_MIDDLE[row], first, last))
            dark.append(modules[first:last])
        runs = (b"|".join(dark).translate(_LETTERS).decode("ascii")
                .replace("ab", "a b").replace("ba", "b a").replace("|", " | "))
        dashes = " ".join(map(_RUN_LENGTH.__getitem__, runs.split())).split(" | ")
        out.extend(f"[{dash} 1] 0 d\nn {first} {mid} m {last} {mid} l S"
                   for (mid, first, last), dash in zip(rows, dashes, strict=True))
        out.append("Q")
        return out


_ALTERNATING = re.compile(rb"\x01+|\x00+")
_LETTERS = bytes.maketrans(b"\x00\x01", b"ab")
_RUN_LENGTH = {"|": "|", **{letter * n: str(n) for letter in "ab" for n in range(1, 178)}}   # 177: version 40
_ROW_MIDDLE = [fp_str(row + 0.5) for row in range(177)]


def verification_qr(document: Mapping[str, Any]) -> QrCode:
    """The QR code the certificate shows: its public verification page."""
    return QrCode(str(document["certificate"]["verification_url"]))


# ---- content operators -------------------------------------------------------------------------------
#
# The operators are written here as reportlab's canvas and text object write them (fp_str and
# escapePDF are reportlab's C helpers), so both outputs below give the same content streams
# (tests/certificates/test_certificate_pdf_writer.py compares them, and with the renderer before).

# Deflate level 1: a certificate's page (~10.5 kB of operators) in ~0.04 ms, to ~3.1 kB; level 6,
# zlib's default and reportlab's, takes ~0.14 ms for ~2.7 kB.
ZLIB_LEVEL = 1

_line_code: dict[tuple[Any, ...], str] = {}
_LINE_CODE_LIMIT = 1 << 14
PREAMBLE = "1 0 0 1 0 0 cm  BT /F1 12 Tf 14.4 TL ET"   # a page's first line, as reportlab's canvas starts it


def _rg(color: Any, op: str) -> str:
    return f"{fp_str(color.red, color.green, color.blue)} {op}"


def line_code(parts: tuple[Part, ...], names: Mapping[str, str], names_key: Any = None) -> str | None:
    """The text operators of one line, after its origin (" /F4 9.5 Tf 11.4 TL 0 0 0 rg ... ET"):
    what reportlab's text object writes for the same font, colour and rise changes. `names` are
    the fonts' names in the document (/F1, ...), `names_key` a hashable form of them; None when a
    part's font is not among them (a TrueType font, whose subsets only reportlab knows).
    Remembered by parts and names."""
    key = (parts, names_key if names_key is not None else tuple(names.items()))
    code = _line_code.get(key)
    if code is not None:
        return code
    out = [""]
    font, size, color = "", 0.0, None
    tf = ""
    for part in parts:
        name = names.get(part.font)
        if name is None:
            return None
        if part.font != font or part.size != size:
            font, size = part.font, part.size
            tf = _font_op(name, size)
            out.append(tf)
        if part.color is not color:
            color = part.color
            out.append(_fill_op(color))
        if part.rise:
            out.append(f"{fp_str(part.rise)} Ts")
        if font not in _SINGLE_BYTE:     # the CID font (a TrueType one has no name here)
            out.append(tf)    # reportlab names a multi-byte font again before its text
            out.append(f"({escapePDF(part.text.encode('utf_16_be'))}) Tj")
        else:   # reportlab's codec for WinAnsiEncoding (its U+00A0 is the space, unlike cp1252's)
            out.append(f"({escapePDF(part.text.encode('winansi'))}) Tj")
        if part.rise:
            out.append("0 Ts")
    out.append("ET")
    code = " ".join(out)
    if len(_line_code) >= _LINE_CODE_LIMIT:
        _line_code.clear()
    _line_code[key] = code
    return code


_SINGLE_BYTE = frozenset((LATIN, LATIN_BOLD, MONO))


@functools.lru_cache(maxsize=256)
def _font_op(name: str, size: float) -> str:
    return f"{name} {fp_str(size)} Tf {fp_str(size * 1.2)} TL"


@functools.lru_cache(maxsize=64)
def _fill_op(color: Any) -> str:
    return _rg(color, "rg")


def _pdf_string(text: str) -> str:
    """A PDF text string as reportlab writes one: ASCII as it is, anything else UTF-16 with a BOM."""
    data = text.encode("ascii") if text.isascii() else b"\xfe\xff" + text.encode("utf_16_be")
    return f"({escapePDF(data)})"


class _Out:
    """What the page layout draws with: one page's content operators at a time, then the file.
    `_Writer` writes the PDF itself; `_CanvasOut` draws on reportlab's canvas (a TrueType font)."""

    names: Mapping[str, str]

    def text(self, parts: tuple[Part, ...], x: float, y: float) -> None:
        raise NotImplementedError

    def link(self, url: str, rect: tuple[float, float, float, float]) -> None:
        raise NotImplementedError

    def stroke(self, color: Any, width: float) -> None:
        raise NotImplementedError

    def line(self, x1: float, y1: float, x2: float, y2: float) -> None:
        raise NotImplementedError

    def fill_rect(self, x: float, y: float, w: float, h: float, color: Any) -> None:
        raise NotImplementedError

    def frame(self, x: float, y: float, w: float, h: float, color: Any, width: float) -> None:
        raise NotImplementedError

    def qr(self, code: QrCode, x: float, y: float) -> None:
        raise NotImplementedError

    def footer(self, left: str, right: str) -> None:
        raise NotImplementedError

    def show_page(self) -> None:
        raise NotImplementedError

    def finish(self) -> bytes:
        raise NotImplementedError


def _footer_code(left: str, right: str) -> list[str]:
    """The footer as reportlab's setFont, setFillColor, drawString and drawRightString write it."""
    size = 7
    right_x = PAGE_W - 18 * mm - pdfmetrics.stringWidth(right, LATIN, size)
    return [f"BT /F1 {size} Tf {fp_str(size * 1.2)} TL ET", _rg(GREY_FOOTER, "rg"),
            f"BT 1 0 0 1 {fp_str(18 * mm, 10 * mm)} Tm ({escapePDF(left.encode('winansi'))}) Tj T* ET",
            f"BT 1 0 0 1 {fp_str(right_x, 10 * mm)} Tm ({escapePDF(right.encode('winansi'))}) Tj T* ET"]


class _Writer(_Out):
    """The whole PDF written here, for the built-in fonts (none embedded).

    What reportlab's canvas and document writer cost a certificate (~1.3 ms of ~1.6, most of it
    formatting PDF objects and text objects anew for each document): here each page's operators
    are strings joined once, deflated (no ASCII85), and the objects that never change (the font
    dictionaries, reportlab's own bytes for them) are formatted once per process."""

    def __init__(self, cjk: str, title: str, author: str, subject: str) -> None:
        self.names = {LATIN: "/F1", LATIN_BOLD: "/F2", MONO: "/F3", cjk: "/F4"}
        self.names_key = tuple(self.names.items())
        self.cjk = cjk
        self.info = (title, author, subject)
        self.code: list[str] = [PREAMBLE]
        self.links: list[str] = []
        self.pages: list[tuple[bytes, list[str]]] = []

    def text(self, parts: tuple[Part, ...], x: float, y: float) -> None:
        code = line_code(parts, self.names, self.names_key)
        assert code is not None, parts
        self.code.append(f"BT 1 0 0 1 {fp_str(x, y)} Tm{code}")

    def link(self, url: str, rect: tuple[float, float, float, float]) -> None:
        self.links.append(f"<< /A << /S /URI /Type /Action /URI {_pdf_string(url)} >> /Border [ 0 0 0 ] "
                          f"/Rect [ {fp_str(*rect)} ] /Subtype /Link /Type /Annot >>")

    def stroke(self, color: Any, width: float) -> None:
        self.code.append(_rg(color, "RG"))
        self.code.append(f"{fp_str(width)} w")

    def line(self, x1: float, y1: float, x2: float, y2: float) -> None:
        self.code.append(f"n {fp_str(x1, y1)} m {fp_str(x2, y2)} l S")

    def fill_rect(self, x: float, y: float, w: float, h: float, color: Any) -> None:
        self.code.append(_rg(color, "rg"))
        self.code.append(f"n {fp_str(x, y, w, h)} re f*")

    def frame(self, x: float, y: float, w: float, h: float, color: Any, width: float) -> None:
        self.stroke(color, width)
        self.code.append(f"n {fp_str(x, y, w, h)} re S")

    def qr(self, code: QrCode, x: float, y: float) -> None:
        self.code.extend(code.operators(x, y))

    def footer(self, left: str, right: str) -> None:
        self.code.extend(_footer_code(left, right))

    def show_page(self) -> None:
        self.code.append(" ")
        self.pages.append((zlib.compress(("\n".join(self.code) + "\n").encode("latin-1"), ZLIB_LEVEL), self.links))
        self.code = [PREAMBLE]
        self.links = []

    def finish(self) -> bytes:
        return _document(_fixed_objects(self.cjk), self.pages, self.info)


_HEADER = b"%PDF-1.4\n%\x93\x8c\x8b\x9e Tanhui registry certificate\n"


@functools.lru_cache(maxsize=8)
def _fixed_objects(cjk: str) -> tuple[bytes, tuple[int, ...]]:
    """The header and objects 1-5 (and where each starts), the same in every certificate: the font resources and the four font
    dictionaries, as reportlab formats them (`CIDFont`, `Type1Font`)."""
    doc = pdfdoc.PDFDocument(invariant=1)
    fonts = [_type1_dict(pdfmetrics.getFont(name).face.name, f"F{i}", doc)
             for i, name in enumerate((LATIN, LATIN_BOLD, MONO), start=1)]
    cid = pdfmetrics.getFont(cjk)
    fonts.append(_cid_dict(cid.face.name, "F4", doc, cid.encodingName))
    objects = [b"<<\n/F1 2 0 R /F2 3 0 R /F3 4 0 R /F4 5 0 R\n>>", *fonts]
    out = bytearray(_HEADER)
    offsets = []
    for i, data in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, data)
    return bytes(out), tuple(offsets)



def _document(fixed: tuple[bytes, tuple[int, ...]], pages: list[tuple[bytes, list[str]]], info: tuple[str, str, str]) -> bytes:
    """The file: the header and the fixed objects, the catalog (6), the page tree (7), the info (8), then each
    page, its content stream and its links; the cross-reference table and the trailer."""
    out = bytearray(fixed[0])
    offsets = list(fixed[1])
    objects: list[bytes] = []
    n = 9
    kids = []
    for _, links in pages:
        kids.append(n)
        n += 2 + len(links)
    title, author, subject = info
    objects.append(b"<< /Lang (zh-CN) /PageMode /UseNone /Pages 7 0 R /Type /Catalog >>")
    objects.append(b"<< /Count %d /Kids [ %s ] /Type /Pages >>" % (len(kids), " ".join(f"{k} 0 R" for k in kids).encode()))
    objects.append((f"<< /Author {_pdf_string(author)} /Creator (Tanhui registry) "
                    f"/Producer (Tanhui registry.certificate_pdf) /Subject {_pdf_string(subject)} "
                    f"/Title {_pdf_string(title)} >>").encode("latin-1"))
    for k, (content, links) in zip(kids, pages, strict=True):
        annots = f" /Annots [ {' '.join(f'{k + 2 + j} 0 R' for j in range(len(links)))} ]" if links else ""
        objects.append((f"<< /Contents {k + 1} 0 R /MediaBox [ 0 0 {fp_str(PAGE_W, PAGE_H)} ] /Parent 7 0 R "
                        f"/Resources << /Font 1 0 R /ProcSet [ /PDF /Text ] >>{annots} /Type /Page >>").encode())
        objects.append(b"<< /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
        objects.extend(link.encode("latin-1") for link in links)
    for i, data in enumerate(objects, start=6):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, data)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    digest = hashlib.md5(out, usedforsecurity=False).hexdigest().encode()
    out += (b"trailer\n<< /ID [ <%s> <%s> ] /Info 8 0 R /Root 6 0 R /Size %d >>\nstartxref\n%d\n%%%%EOF\n"
            % (digest, digest, len(offsets) + 1, xref))
    return bytes(out)


class _CanvasOut(_Out):
    """reportlab's canvas, for a CJK TrueType font (embedded as subsets, which only reportlab
    writes). The same operators as `_Writer`, but for the lines in the TrueType font: reportlab's
    text objects."""

    def __init__(self, canvas: Any, buf: io.BytesIO, fonts: tuple[str, ...]) -> None:
        self.canvas = canvas
        self.buf = buf
        doc = canvas._doc   # reportlab's document: registering a font there names it (/F1, ...)
        self.names = {font: doc.getInternalFontName(font) for font in fonts
                      if not pdfmetrics.getFont(font)._dynamicFont}

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

    def text(self, parts: tuple[Part, ...], x: float, y: float) -> None:
        code = line_code(parts, self.names)
        if code is None:
            self.canvas.drawText(self._text_object(parts, x, y))
        else:
            self.canvas.addLiteral(f"BT 1 0 0 1 {fp_str(x, y)} Tm{code}")

    def link(self, url: str, rect: tuple[float, float, float, float]) -> None:
        self.canvas.linkURL(url, rect, relative=0)

    def stroke(self, color: Any, width: float) -> None:
        self.canvas.setStrokeColor(color)
        self.canvas.setLineWidth(width)

    def line(self, x1: float, y1: float, x2: float, y2: float) -> None:
        self.canvas.line(x1, y1, x2, y2)

    def fill_rect(self, x: float, y: float, w: float, h: float, color: Any) -> None:
        self.canvas.setFillColor(color)
        self.canvas.rect(x, y, w, h, stroke=0, fill=1)

    def frame(self, x: float, y: float, w: float, h: float, color: Any, width: float) -> None:
        self.stroke(color, width)
        self.canvas.rect(x, y, w, h, stroke=1, fill=0)

    def qr(self, code: QrCode, x: float, y: float) -> None:
        code.draw(self.canvas, x, y)

    def footer(self, left: str, right: str) -> None:
        c = self.canvas
        c.setFont(LATIN, 7)
        c.setFillColor(GREY_FOOTER)
        c.drawString(18 * mm, 10 * mm, left)
        c.drawRightString(PAGE_W - 18 * mm, 10 * mm, right)

    def show_page(self) -> None:
        self.canvas.showPage()

    def finish(self) -> bytes:
        self.canvas.save()
        return self.buf.getvalue()


class _Pages:
    """A cursor going down the page, and a new page when a block does not fit.

    Each line of text is drawn where it stands in the reading order, as its text operators
    (`line_code`, remembered) moved into place."""

    def __init__(self, out: _Out, footer_left: str) -> None:
        self.out = out
        self.footer_left = footer_left
        self.page = 1
        self.y = TOP
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
        self.out.footer(self.footer_left, f"page {self.page}")

    def new_page(self) -> None:
        self.finish_page()
        self.out.show_page()
        self.page += 1
        self.y = TOP
        self._stroke = None

    def draw_line(self, parts: tuple[Part, ...], x: float, y: float) -> None:
        if not parts:
            return
        self.out.text(parts, x, y)
        for i, part in enumerate(parts):
            if part.link:
                x0 = x + sum(text_width(p.text, p.font, p.size) for p in parts[:i])
                x1 = x0 + text_width(part.text, part.font, part.size)
                self.out.link(part.link, (x0, y - 0.2 * part.size, x1, y + 0.8 * part.size))

    def draw_lines(self, lines: Lines, x: float, top: float, width: float,
                   start: int = 0, stop: int | None = None) -> None:
        """Lines `start:stop` of a paragraph, the first of them `lines.first` below `top`.

        `_Writer`'s operators and links for them are remembered with the paragraph, by where it is
        drawn: most of a certificate's paragraphs stand where they stood on the one before."""
        out = self.out
        if not isinstance(out, _Writer):
            self._draw_lines(lines, x, top, width, start, stop)
            return
        key = (x, top, width, start, -1 if stop is None else stop)
        drawn = lines.drawn.get(key)
        if drawn is None:
            code, links = len(out.code), len(out.links)
            self._draw_lines(lines, x, top, width, start, stop)
            if len(lines.drawn) >= 16:
                lines.drawn.clear()
            lines.drawn[key] = (tuple(out.code[code:]), tuple(out.links[links:]))
        else:
            out.code.extend(drawn[0])
            if drawn[1]:
                out.links.extend(drawn[1])

    def _draw_lines(self, lines: Lines, x: float, top: float, width: float, start: int, stop: int | None) -> None:
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
        if self._stroke != (color, width):
            self.out.stroke(color, width)
            self._stroke = (color, width)
        self.out.line(x1, y, x2, y)

    def fill(self, x: float, y: float, w: float, h: float, color: Any) -> None:
        self.out.fill_rect(x, y, w, h, color)


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
              # Three spans, cut at spaces (the same lines as one): the two that never change
              # keep their atoms (`_span_atoms`).
              Span("flask registry verify-certificate ", MONO, 7.5), Span(f"{number}.json", MONO, 7.5),
              Span(" --public-key tanhui-registry-key.pem", MONO, 7.5)),
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
    pages.out.frame(LEFT, bottom, WIDTH, box_h, GREEN, 0.75)
    pages._stroke = None   # set here, not by `rule`
    # VALIGN MIDDLE, as reportlab's table places a cell: padding 3 above and below.
    qr_top = bottom + (box_h + 3 - 3 + QR_SIZE) / 2
    pages.out.qr(verification_qr(document), LEFT + PAD, qr_top - QR_SIZE)
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
    return _render(document, font_file, own_writer=font_file is None)


def _render(document: Mapping[str, Any], font_file: str | os.PathLike[str] | None, own_writer: bool) -> bytes:
    """`render_pdf`, written by `_Writer` or on reportlab's canvas (`_CanvasOut`; the tests compare both)."""
    cjk = cjk_font(font_file)
    c = document["certificate"]
    number = str(c["certificate_number"])
    title = f"碳中和注销证书 Retirement Certificate {number}"
    author = str(c.get("registry", ""))
    subject = f"{c['beneficiary']} — {tonnes(int(c['quantity_kg']))} t CO2e"
    out: _Out
    if own_writer:
        if pdfmetrics.getFont(cjk)._dynamicFont:
            raise ValueError("the PDF writer here has only the built-in fonts; a TrueType font needs reportlab's canvas")
        out = _Writer(cjk, title, author, subject)
    else:
        buf = io.BytesIO()
        canvas = Canvas(buf, pagesize=A4, invariant=1, lang="zh-CN", initialFontName=LATIN)
        canvas.setTitle(title)
        canvas.setAuthor(author)
        canvas.setSubject(subject)
        out = _CanvasOut(canvas, buf, (LATIN, LATIN_BOLD, MONO, cjk))
    pages = _Pages(out, f"{number} · {document['sha256'][:16]}…")
    _draw(pages, document, cjk)
    pages.finish_page()
    out.show_page()
    return out.finish()
