"""`registry.qr_matrix` makes exactly segno's QR code, placing, masking and scoring on integers."""

from __future__ import annotations

import segno
from hypothesis import given, settings
from hypothesis import strategies as st
from segno import consts, encoder

from registry import qr_matrix

URL = "https://tanhui.example/retirements/THC-2026-0123456789"


def _segno(value: str) -> list[bytes]:
    return [bytes(row) for row in segno.make_qr(value, error="m", boost_error=False).matrix]


def _segno_masked(value: str, mask: int) -> list[bytearray]:
    """segno's own steps: the final message placed, then `mask` applied as `find_and_apply_best_mask`
    does it (before the format information)."""
    error = consts.ERROR_LEVEL_M
    code = segno.make_qr(value, error="m", boost_error=False)
    version = code.version
    segments = encoder.prepare_data(value, None, None)
    buff = encoder.Buffer()
    for segment in segments:
        encoder.write_segment(buff, segment, None, encoder.version_range(version), False)
    capacity = consts.SYMBOL_CAPACITY[version][error]
    encoder.write_terminator(buff, capacity, None, len(buff))
    encoder.write_padding_bits(buff, version, len(buff))
    encoder.write_pad_codewords(buff, version, capacity, len(buff))
    final = encoder.make_final_message(version, error, buff)
    width = encoder.calc_matrix_size(version)
    placed = encoder.make_matrix(width, width)
    encoder.add_finder_patterns(placed, width, width)
    encoder.add_alignment_patterns(placed, width, width)
    encoder.add_codewords(placed, final, version)
    function = encoder.make_matrix(width, width)
    encoder.add_finder_patterns(function, width, width)
    encoder.add_alignment_patterns(function, width, width)
    function[-8][8] = 0x1
    rows = [bytearray(row) for row in placed]
    encoder.apply_mask(rows, encoder.get_data_mask_functions(False)[mask], width, width,
                       lambda i, j: function[i][j] > 0x1)
    return rows


def test_the_certificate_url_gives_segnos_matrix_and_mask() -> None:
    code = segno.make_qr(URL, error="m", boost_error=False)
    lay, version, _, boards = qr_matrix.masked_boards(URL)
    assert version == code.version == 4 and lay.size == 33
    assert qr_matrix.best_mask(lay, boards) == code.mask
    assert [bytes(row) for row in qr_matrix.matrix(URL)] == _segno(URL)


def test_every_mask_places_and_scores_as_segno() -> None:
    for value in (URL, "a", "碳惠 Tanhui " * 12, "0123456789" * 40):
        lay, _, _, boards = qr_matrix.masked_boards(value)
        for mask, board in enumerate(boards):
            rows = _segno_masked(value, mask)
            assert lay.rows(board) == rows, (value, mask)
            assert qr_matrix.mask_scores([bytes(r) for r in rows]) == encoder.mask_scores(rows, lay.size, lay.size)


def test_scores_of_a_hand_made_matrix() -> None:
    """5x5 hand-counted: rows 0-1 all dark, rows 2-4 light except one dark module at (3, 2).
    N1: rows 0, 1, 2 are runs of 5 (3 each = 9), row 3 has no run >= 5, row 4 is a run of 5 (3);
    columns 0, 1, 3, 4 are runs of 2 dark + 3 light (none >= 5), column 2 neither: N1 = 12.
    N2: 2x2 blocks of one colour: rows 0-1 give 4; rows 1-2 none; rows 2-3 the blocks not touching
    column 2: (2-3, 0-1) and (2-3, 3-4) = 2; rows 3-4 likewise 2: 8 blocks = 24. N3 none. N4: 11 of
    25 dark = 44%, |44 - 50| / 5 = 1 step = 10."""
    rows = [b"\x01" * 5, b"\x01" * 5, b"\x00" * 5, b"\x00\x00\x01\x00\x00", b"\x00" * 5]
    assert qr_matrix.mask_scores(rows) == (12, 24, 0, 10)
    assert qr_matrix.mask_scores(rows) == encoder.mask_scores([bytearray(r) for r in rows], 5, 5)


def _bits(text: str) -> bytes:
    return bytes(int(ch) for ch in text)


def test_finder_like_patterns_at_edges_and_overlapping_score_as_segno() -> None:
    """N3 where segno's scan order matters: patterns that overlap (10111011101: segno skips the
    second after counting the first), at the edges (light beyond the symbol), with too few light
    modules before and after, in rows and in columns."""
    size = 21
    lines = ["1011101" + "0" * 14, "0000" + "10111011101" + "000000", "0" * 10 + "1011101" + "0000",
             "1" + "1011101" + "1" * 13, "0" * 14 + "1011101", "00" + "1011101" + "0" + "1011101" + "0000",
             "1011101" + "1011101" + "1011101", "0000" + "101110111011101" + "00"]
    rows = [_bits(line) for line in lines] + [_bits(("01" * 11)[:size]) for _ in range(size - len(lines))]
    for matrix in (rows, [bytes(col) for col in zip(*rows, strict=True)]):
        assert qr_matrix.mask_scores(matrix) == encoder.mask_scores([bytearray(r) for r in matrix], size, size)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=5, max_value=29).flatmap(
    lambda n: st.lists(st.binary(min_size=n, max_size=n).map(lambda b: bytes(x & 1 for x in b)),
                       min_size=n, max_size=n)))
def test_any_matrix_scores_as_segno_scores_it(rows: list[bytes]) -> None:
    size = len(rows)
    assert qr_matrix.mask_scores(rows) == encoder.mask_scores([bytearray(r) for r in rows], size, size)


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.text(min_size=1, max_size=120),
    st.from_regex(r"https://[a-z.]{3,30}/retirements/THC-20[0-9]{2}-[0-9]{1,12}", fullmatch=True),
))
def test_any_value_gives_segnos_matrix(value: str) -> None:
    assert [bytes(row) for row in qr_matrix.matrix(value)] == _segno(value)


def test_versions_with_blocks_of_two_lengths_give_segnos_matrix() -> None:
    """Versions 1-20 at level M, some with blocks of two lengths (interleaved column by column)."""
    for version in range(1, 21):
        blocks = consts.ECC[version][consts.ERROR_LEVEL_M]
        value = "x" * (sum(b.num_blocks * b.num_data for b in blocks) - 3)   # mode and length: <= 3 bytes
        assert len(qr_matrix.matrix(value)) == 17 + 4 * version
        assert [bytes(row) for row in qr_matrix.matrix(value)] == _segno(value), version
