"""`registry.qr_matrix` makes exactly segno's QR code, choosing segno's data mask faster."""

from __future__ import annotations

import segno
from hypothesis import given, settings
from hypothesis import strategies as st
from segno import encoder

from registry import qr_matrix

URL = "https://tanhui.example/retirements/THC-2026-0123456789"


def _segno(value: str) -> list[bytes]:
    return [bytes(row) for row in segno.make_qr(value, error="m", boost_error=False).matrix]


def _segno_masked(value: str, mask: int) -> tuple[list[bytearray], int]:
    """The placed matrix with `mask` applied as segno's `find_and_apply_best_mask` does it."""
    placed, version, _ = qr_matrix._placed(value)
    width = len(placed)
    function = encoder.make_matrix(width, width)
    encoder.add_finder_patterns(function, width, width)
    encoder.add_alignment_patterns(function, width, width)
    function[-8][8] = 0x1
    rows = [bytearray(row) for row in placed]
    encoder.apply_mask(rows, encoder.get_data_mask_functions(False)[mask], width, width,
                       lambda i, j: function[i][j] > 0x1)
    return rows, version


def test_the_certificate_url_gives_segnos_matrix_and_mask() -> None:
    code = segno.make_qr(URL, error="m", boost_error=False)
    placed, version, _ = qr_matrix._placed(URL)
    assert version == code.version == 4
    assert qr_matrix.best_mask(placed, version)[0] == code.mask
    assert [bytes(row) for row in qr_matrix.matrix(URL)] == _segno(URL)


def test_every_mask_scores_as_segno_scores_it() -> None:
    for mask in range(8):
        rows, version = _segno_masked(URL, mask)
        width, patterns = qr_matrix._masks(version)
        placed, _, _ = qr_matrix._placed(URL)
        mine = [(int.from_bytes(row, "big") ^ p).to_bytes(width, "big") for row, p in zip(placed, patterns[mask],
                                                                                          strict=True)]
        assert mine == [bytes(row) for row in rows]
        assert qr_matrix.mask_scores(mine) == encoder.mask_scores(rows, width, width)


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


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.text(min_size=1, max_size=120),
    st.from_regex(r"https://[a-z.]{3,30}/retirements/THC-20[0-9]{2}-[0-9]{1,12}", fullmatch=True),
))
def test_any_value_gives_segnos_matrix(value: str) -> None:
    assert [bytes(row) for row in qr_matrix.matrix(value)] == _segno(value)
