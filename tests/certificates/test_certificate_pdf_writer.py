"""The PDF writer of `registry.certificate_pdf` against reportlab: the renderer before it (a frozen
copy in `reference_pdf`) and reportlab's canvas path of the same layout must give the same pages.

The content streams are compared byte for byte once inflated (the operators are written as
reportlab writes them); poppler must read the file (pdfinfo, pdftotext, pdftoppm) and extract the
same text and metadata as from reportlab's file; the cross-reference table must point at objects."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import certificate_pdf as pdf
from tests.certificates import reference_pdf as ref

POPPLER = all(shutil.which(tool) for tool in ("pdfinfo", "pdftotext", "pdftoppm"))
needs_poppler = pytest.mark.skipif(not POPPLER, reason="needs poppler-utils (pdfinfo, pdftotext, pdftoppm)")

ODD = "A (b) \\ c) \\\\( 😀 𠀀 𝄞 مرحبا 한국어 ẞ ǅ ﬁ € ‰ ™ ·…— \u200b\u00a0 «»"


def _doc(number: str, beneficiary: str, serials: int, message: str | None = None,
         registry: str = "碳惠 Tanhui Registry", project: str = "公交出行", project_en: str | None = "Public transit",
         key_url: str | None = None) -> dict[str, Any]:
    rows = [{"serial": f"THR-00007-2025-{1000 * i + 1}-{1000 * i + 1000}", "vintage": 2025, "quantity_kg": 1000,
             "project": {"id": 7, "code": "00007", "title": project, "title_en": project_en},
             "methodology": {"code": "CI-BUS", "version": "2.1", "title_zh": "公共交通"}} for i in range(serials)]
    body: dict[str, Any] = {
        "certificate_number": number, "registry": registry, "beneficiary": beneficiary,
        "jurisdiction": "广东省", "purpose": "event_offset", "message": message, "footprint_ref": "FP-1",
        "quantity_kg": 1000 * serials, "retired_at": "2026-01-02T03:04:05Z", "retired_by": {"name": "会务方"},
        "serials": rows, "verification_url": f"https://x.example/retirements/{number}"}
    if key_url:
        body["public_key_url"] = key_url
    return {"certificate": body, "sha256": "9c52a2e978c661f6" * 4, "algorithm": "Ed25519", "key_id": "0123456789abcdef"}


DOCS = {
    "ascii": _doc("THC-2026-0000000001", "Greater Bay Area Forum", 1, "All emissions offset.",
                  registry="Tanhui Registry", project="Bus", project_en=None),
    "chinese": _doc("THC-2026-0000000002", "大湾区论坛 GBA Forum", 2, "本次论坛碳排放已全部抵消 / the forum's emissions are offset",
                    key_url="https://x.example/.well-known/tanhui-registry-key.pem"),
    "long_message": _doc("THC-2026-0000000003", "成都大运会", 1,
                         "很长的留言，" * 150 + " and a long English tail " * 60 + "\n".join(f"第{i}行 line {i}" for i in range(60))),
    "many_ranges": _doc("THC-2026-0000000004", "成都大运会 <Chengdu & Co>", 45, project="公交出行" * 4),
    "odd": _doc("THC-2026-0000000005", ODD, 3, ODD * 4 + "\tTab\r\nCR\x00NUL\x07", project=ODD, project_en=ODD),
}


def _streams(data: bytes) -> list[bytes]:
    """Every stream of the file, inflated (reportlab's are ASCII85 then Flate, ours Flate)."""
    out = []
    for m in re.finditer(rb"/Length (\d+)\s*>>\s*stream\r?\n", data):
        raw = data[m.end():m.end() + int(m.group(1))]
        if raw.rstrip().endswith(b"~>"):
            raw = base64.a85decode(raw.strip(), adobe=True)
        out.append(zlib.decompress(raw))
    return out


def _objects(data: bytes) -> dict[int, bytes]:
    return {int(m.group(1)): m.group(2) for m in re.finditer(rb"(?m)^(\d+) 0 obj\n(.*?)\nendobj\n", data, re.S)}


def _run(tool: str, *args: str) -> str:
    r = subprocess.run([tool, *args], capture_output=True, text=True, check=True)
    assert r.stderr == "", (tool, r.stderr)
    return r.stdout


@pytest.mark.parametrize("name", DOCS)
def test_the_pages_are_reportlabs(name: str) -> None:
    """Our file's content streams are the old renderer's and the canvas path's, byte for byte."""
    doc = DOCS[name]
    ours = pdf.render_pdf(doc)
    assert _streams(ours) == _streams(ref.render_pdf(doc))
    assert _streams(ours) == _streams(pdf._render(doc, None, own_writer=False))
    if name in ("long_message", "many_ranges"):
        assert len(_streams(ours)) >= 3


@needs_poppler
@pytest.mark.parametrize("name", DOCS)
def test_poppler_reads_what_it_reads_from_reportlab(name: str, tmp_path: Path) -> None:
    doc = DOCS[name]
    ours, theirs = tmp_path / "ours.pdf", tmp_path / "theirs.pdf"
    ours.write_bytes(pdf.render_pdf(doc))
    theirs.write_bytes(ref.render_pdf(doc))
    for mode in ([], ["-layout"], ["-raw"]):
        assert _run("pdftotext", *mode, str(ours), "-") == _run("pdftotext", *mode, str(theirs), "-")

    def info(path: Path) -> dict[str, str]:
        lines = _run("pdfinfo", "-enc", "UTF-8", str(path)).splitlines()
        fields = dict(line.split(":", 1) for line in lines)
        return {k: fields[k].strip() for k in ("Title", "Author", "Subject", "Pages", "Page size")}

    assert info(ours) == info(theirs)
    assert info(ours)["Title"] == f"碳中和注销证书 Retirement Certificate {doc['certificate']['certificate_number']}"
    _run("pdftoppm", "-r", "20", "-png", str(ours), str(tmp_path / "page"))   # no complaint on stderr
    assert len(list(tmp_path.glob("page*.png"))) == int(info(ours)["Pages"])


@pytest.mark.parametrize("name", DOCS)
def test_the_cross_reference_table_points_at_the_objects(name: str) -> None:
    data = pdf.render_pdf(DOCS[name])
    assert data.startswith(b"%PDF-1.4\n%") and data.endswith(b"%%EOF\n")
    start = int(re.search(rb"startxref\n(\d+)\n%%EOF\n$", data).group(1))   # type: ignore[union-attr]
    assert data[start:start + 5] == b"xref\n"
    head = re.match(rb"xref\n0 (\d+)\n", data[start:])
    assert head is not None
    size = int(head.group(1))
    table = data[start + head.end():].split(b"trailer\n", 1)
    entries = [table[0][i:i + 20] for i in range(0, len(table[0]), 20)]
    assert len(entries) == size and entries[0] == b"0000000000 65535 f \n"
    for n, entry in enumerate(entries[1:], start=1):
        assert re.fullmatch(rb"\d{10} 00000 n \n", entry), entry
        offset = int(entry[:10])
        assert data[offset:].startswith(b"%d 0 obj\n" % n), n
    objects = _objects(data)
    assert sorted(objects) == list(range(1, size))
    assert re.search(rb"/Size %d\b" % size, table[1])
    # Every reference names an object there is, and each page's /Contents stream has its /Length.
    assert {int(r) for r in re.findall(rb"(\d+) 0 R", data)} <= set(objects)
    for n, body in objects.items():
        m = re.match(rb"<< /Filter /FlateDecode /Length (\d+) >>\nstream\n", body)
        if m:
            assert body[m.end() + int(m.group(1)):] == b"\nendstream", n


def test_links_and_fonts_are_reportlabs() -> None:
    """The verification link's annotation (its URL and rectangle) and the font dictionaries are
    those of reportlab's file."""
    doc = DOCS["chinese"]
    ours, theirs = _objects(pdf.render_pdf(doc)), _objects(ref.render_pdf(doc))

    def links(objects: dict[int, bytes]) -> list[tuple[bytes, bytes]]:
        return sorted((re.search(rb"/URI (\(.*?\))", o).group(1),                      # type: ignore[union-attr]
                       re.search(rb"/Rect \[ (.*?) \]", o).group(1))                   # type: ignore[union-attr]
                      for o in objects.values() if b"/Subtype /Link" in o)

    assert links(ours) == links(theirs) and len(links(ours)) == 1

    def fonts(objects: dict[int, bytes]) -> list[bytes]:
        return sorted(o for o in objects.values() if b"/Type /Font" in o and b"/BaseFont" in o)

    assert fonts(ours) == fonts(theirs) and len(fonts(ours)) == 4


def test_deterministic_and_the_same_in_any_order() -> None:
    first = [pdf.render_pdf(doc) for doc in DOCS.values()]
    again = [pdf.render_pdf(doc) for doc in reversed(DOCS.values())][::-1]
    assert first == again


def test_the_writer_has_only_the_builtin_fonts() -> None:
    wqy = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
    if not wqy.exists():
        pytest.skip("needs fonts-wqy-microhei")
    with pytest.raises(ValueError):
        pdf._render(DOCS["ascii"], wqy, own_writer=True)


_TEXT = st.text(st.one_of(
    st.characters(min_codepoint=32, max_codepoint=126),
    st.sampled_from("碳中和注销证书，。、；：？！（）《》「」“”…—·€ \n\t()\\"),
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
    st.characters(codec="utf-8", exclude_categories=("Cs",)),
), max_size=120)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(beneficiary=_TEXT.filter(lambda s: s.strip() != ""), message=_TEXT, serials=st.integers(1, 4),
       project=_TEXT)
def test_any_text_gives_reportlabs_pages(beneficiary: str, message: str, serials: int, project: str) -> None:
    doc = _doc("THC-H-1", beneficiary, serials, message or None, project=project)
    assert _streams(pdf.render_pdf(doc)) == _streams(ref.render_pdf(doc))
