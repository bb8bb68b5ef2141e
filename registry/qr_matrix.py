"""The module matrix of a QR code, as segno makes it, with segno's data-mask choice made faster.

Why not just `segno.make_qr`: about nine tenths of its time for a certificate URL (version 4, 33x33
modules) goes to choosing the data mask, where segno applies each of the eight masks with two Python
calls per module and scores each result module by module (ISO/IEC 18004:2015 7.8.3). That was ~8 ms
of a certificate PDF on this project's bench machine. Here the same steps run with segno's own
encoder functions (data encoding, error correction, codeword placement, format and version
information); only the masking and the penalty scores are computed differently: a mask is one
precomputed row pattern XORed into each row as an integer, and the scores count runs and blocks
with whole-matrix bytes operations (one regular expression substitution for N1, C-level `map`
and integer AND for N2, `bytes.find` for N3, `sum` for N4), following segno's `mask_scores` term for term, including how it treats the reserved
modules (value 0x2) during the evaluation. `matrix(value)` returns exactly `segno.make_qr(value,
error="m", boost_error=False).matrix` (tests/certificates/test_qr_matrix.py compares both, and the
scores with `segno.encoder.mask_scores`, on many values); should a segno upgrade change its
internals, those tests say so.
"""

from __future__ import annotations

import functools
import re
from operator import eq

from segno import consts
from segno import encoder as _enc

_RUN = re.compile(rb"(.)\1{4,}", re.DOTALL)   # five or more equal modules in a row (N1)
_FINDER = bytes((1, 0, 1, 1, 1, 0, 1))         # the 1:1:3:1:1 pattern (N3)

Matrix = tuple[bytearray, ...]


@functools.lru_cache(maxsize=8)
def _masks(version: int) -> tuple[int, list[list[int]]]:
    """The symbol's width and, for each of the eight QR masks, every row's XOR pattern as an integer
    (the mask's modules inside the encoding region, as segno's `find_and_apply_best_mask` selects it)."""
    width = _enc.calc_matrix_size(version)
    function = _enc.make_matrix(width, width)
    _enc.add_finder_patterns(function, width, width)
    _enc.add_alignment_patterns(function, width, width)
    function[-8][8] = 0x1
    patterns = []
    for fn in _enc.get_data_mask_functions(False):
        rows = []
        for i in range(width):
            row = bytes(1 if function[i][j] > 0x1 and fn(i, j) else 0 for j in range(width))
            rows.append(int.from_bytes(row, "big"))
        patterns.append(rows)
    return width, patterns


def _n3(joined: bytes, size: int) -> int:
    """segno's `n3_pattern_occurrences` summed over sequences of `size` modules joined by one 0xff
    byte (the pattern cannot span it); positions and the light areas are taken within each sequence."""
    count = 0
    stride = size + 1
    idx = joined.find(_FINDER)
    while idx != -1:
        local = idx % stride
        start = idx - local
        offset = local + 7
        if local in (0, size - 7) \
                or not any(joined[start + max(local - 4, 0):idx]) \
                or not any(joined[start + offset:start + min(offset + 4, size)]):
            count += 40
        else:
            offset = local + 4
        idx = joined.find(_FINDER, start + offset)
    return count


def _runs(joined: bytes) -> int:
    """N1 of sequences joined by single 0xff bytes: each run of 5 + i equal modules costs 3 + i."""
    rest, runs = _RUN.subn(b"", joined)
    return len(joined) - len(rest) - 2 * runs


@functools.lru_cache(maxsize=8)
def _not_first_column(size: int) -> int:
    """A bit set at every module of rows 1.. except the first column (where a 2x2 block cannot end)."""
    return int.from_bytes(bytes(0 if t % size == 0 else 1 for t in range(size * size - size)), "big")


def mask_scores(rows: list[bytes]) -> tuple[int, int, int, int]:
    """(N1, N2, N3, N4) of a square matrix, as `segno.encoder.mask_scores` computes them."""
    size = len(rows)
    flat = b"".join(rows)
    columns = [flat[j::size] for j in range(size)]
    by_row, by_column = b"\xff".join(rows), b"\xff".join(columns)
    n1 = _runs(by_row) + _runs(by_column)
    # N2: module k ends a 2x2 block of one colour when it equals its left neighbour, the module above
    # equals its own left neighbour, and it equals the module above (one byte per module: 1 = equal).
    left = b"\x00" + bytes(map(eq, flat[1:], flat[:-1]))
    above = bytes(map(eq, flat[size:], flat[:-size]))
    blocks = (int.from_bytes(left[size:], "big") & int.from_bytes(left[:-size], "big")
              & int.from_bytes(above, "big") & _not_first_column(size))
    n2 = 3 * blocks.bit_count()
    n3 = _n3(by_row, size) + _n3(by_column, size)
    percent = float(sum(flat)) / (size ** 2)
    n4 = 10 * int(abs(percent * 100 - 50) / 5)
    return n1, n2, n3, n4


def _placed(value: str) -> tuple[Matrix, int, int]:
    """segno's `encode` + `_encode` up to the codeword placement, for error level M, no boost, no ECI:
    the unmasked matrix, the version and the error level."""
    error = _enc.normalize_errorlevel("m", accept_none=True)
    segments = _enc.prepare_data(value, None, None)
    version = _enc.find_version(segments, error, eci=False, micro=False)
    buff = _enc.Buffer()
    ver_range = _enc.version_range(version)
    for segment in segments:
        _enc.write_segment(buff, segment, None, ver_range, False)
    capacity = consts.SYMBOL_CAPACITY[version][error]
    _enc.write_terminator(buff, capacity, None, len(buff))
    _enc.write_padding_bits(buff, version, len(buff))
    _enc.write_pad_codewords(buff, version, capacity, len(buff))
    buff = _enc.make_final_message(version, error, buff)
    width = _enc.calc_matrix_size(version)
    placed = _enc.make_matrix(width, width)
    _enc.add_finder_patterns(placed, width, width)
    _enc.add_alignment_patterns(placed, width, width)
    _enc.add_codewords(placed, buff, version)
    return placed, version, error


def best_mask(placed: Matrix, version: int) -> tuple[int, list[bytes]]:
    """The mask with the lowest penalty (the first of equals, as segno) and the masked rows."""
    width, patterns = _masks(version)
    base = [int.from_bytes(row, "big") for row in placed]
    best: tuple[int, int, list[bytes]] | None = None
    for number, pattern in enumerate(patterns):
        rows = [(r ^ p).to_bytes(width, "big") for r, p in zip(base, pattern, strict=True)]
        score = sum(mask_scores(rows))
        if best is None or score < best[0]:
            best = (score, number, rows)
    assert best is not None
    return best[1], best[2]


def matrix(value: str) -> Matrix:
    """The module matrix of the QR code (error correction M) of `value`, one bytearray a row, 1 = dark:
    the same as `segno.make_qr(value, error="m", boost_error=False).matrix`."""
    placed, version, error = _placed(value)
    mask, rows = best_mask(placed, version)
    out = tuple(bytearray(row) for row in rows)
    _enc.add_format_info(out, version, error, mask)
    _enc.add_version_info(out, version)
    return out
