"""The module matrix of a QR code, as segno makes it, with the costly steps done on integers.

Why not just `segno.make_qr`: for a certificate URL (version 4, 33x33 modules) segno spends ~5 ms
in Python loops over modules: the Reed-Solomon division, the codeword placement, and above all the
data mask choice, where it applies each of the eight masks and scores each result module by module
(ISO/IEC 18004:2015 7.8.3). Here segno's own functions still encode the data into codewords (a
byte mode segment's bits made here, from one integer) and add the format and version information;
the rest is done on integers:

- error correction: the Reed-Solomon remainder by a shift register over whole-remainder integers
  (one table row per factor), blocks interleaved as segno's `make_final_message` does;
- placement: the symbol is one integer "board", a bit per module, rows `stride` bits apart with four
  guard columns between them and four guard rows above and below; the order in which segno's
  `add_codewords` places bits is learnt once per version, so placing is one C-level gather;
- masking: each mask is a precomputed board XORed in;
- the penalty scores (segno's `mask_scores`, term for term): N1 and N2 by shifting and ANDing the
  board of each colour (a run of 5 + i equal modules holds 1 + i windows of five and one start:
  3 + i), N3 by matching the 1:1:3:1:1 pattern and its four light modules (guards count as light,
  as the symbol's edge does for segno) on the whole board at once, with segno's scan order replayed
  only when two patterns overlap; N4 from the dark count.

`matrix(value)` returns exactly `segno.make_qr(value, error="m", boost_error=False).matrix`
(tests/certificates/test_qr_matrix.py compares both, and the scores with `segno.encoder.mask_scores`,
on many values); should a segno upgrade change its internals, those tests say so.
"""

from __future__ import annotations

import functools
from itertools import zip_longest
from operator import itemgetter
from typing import Any

from segno import consts
from segno import encoder as _enc

GUARD = 4                                  # guard columns between rows, guard rows above and below
_TO_ASCII = bytes.maketrans(b"\x00\x01", b"01")
_FROM_ASCII = bytes.maketrans(b"01", b"\x00\x01")

Matrix = tuple[bytearray, ...]


class Geometry:
    """Where each module of a `size` x `size` symbol is on a board (bit (r + 4) * stride + c + 4)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.stride = size + GUARD
        self.length = (size + 2 * GUARD) * self.stride
        row = (1 << size) - 1
        self.valid = 0
        for r in range(size):
            self.valid |= row << self.bit(r, 0)
        self.guard = ((1 << self.length) - 1) ^ self.valid

    def bit(self, r: int, c: int) -> int:
        return (r + GUARD) * self.stride + c + GUARD

    def board(self, rows: list[bytes] | tuple[bytearray, ...]) -> int:
        """The board of the modules equal to 1 in `rows`."""
        out = 0
        for r, row in enumerate(rows):
            out |= int(bytes(row[::-1]).translate(_TO_ASCII), 2) << self.bit(r, 0)
        return out

    def rows(self, board: int) -> list[bytearray]:
        """The rows of a board, one byte a module (1 = set)."""
        size = self.size
        flat = format(board, f"0{self.length}b")[::-1].encode().translate(_FROM_ASCII)  # flat[k]: bit k
        return [bytearray(flat[start:start + size]) for start in range(self.bit(0, 0), self.bit(size, 0), self.stride)]


@functools.lru_cache(maxsize=8)
def geometry(size: int) -> Geometry:
    return Geometry(size)


def _n1_n2(b: int, stride: int) -> tuple[int, int]:
    """N1 and N2 of the modules of one colour (board `b`, zero outside the symbol)."""
    h2 = b & (b >> 1)
    h5 = h2 & (h2 >> 2) & (b >> 4)                 # five in a row start here
    v2 = b & (b >> stride)
    v5 = v2 & (v2 >> 2 * stride) & (b >> 4 * stride)
    n1 = (h5.bit_count() + 2 * (h5 & ~(h5 << 1)).bit_count()
          + v5.bit_count() + 2 * (v5 & ~(v5 << stride)).bit_count())
    return n1, 3 * (h2 & (h2 >> stride)).bit_count()


def _n3(dark: int, light: int, open_: int, step: int, stride: int) -> int:
    """N3 along rows (`step` 1) or columns (`step` = stride): segno's `n3_pattern_occurrences`.

    `open_` is the light modules with the guards (outside the symbol counts as light, as segno's
    clipped slices do at the edges)."""
    found = (dark & (light >> step) & (dark >> 2 * step) & (dark >> 3 * step) & (dark >> 4 * step)
             & (light >> 5 * step) & (dark >> 6 * step))
    if not found:
        return 0
    o2 = open_ & (open_ >> step)
    o4 = o2 & (o2 >> 2 * step)                       # four light modules start here
    counted = (o4 << 4 * step) | (o4 >> 7 * step)    # light before the pattern, or after it
    # Two patterns can only overlap 4 or 6 modules apart (1:1:3:1:1 matches itself nowhere else).
    # segno resumes its search 7 modules on after a counted one, 4 after one that is not counted:
    # the patterns with no other that near are all scored; those of an overlapping run are
    # replayed as segno scans them, lowest bit first (replaying every pattern cost ~10 us).
    involved = found & ((found << 4 * step) | (found << 6 * step) | (found >> 4 * step) | (found >> 6 * step))
    score = 40 * ((found ^ involved) & counted).bit_count()
    resume: dict[int, int] = {}
    while involved:
        low = involved & -involved
        involved ^= low
        p = low.bit_length() - 1
        line = p // stride if step == 1 else p % stride
        if p < resume.get(line, -1):
            continue
        if (counted >> p) & 1:
            score += 40
            resume[line] = p + 7 * step
        else:
            resume[line] = p + 4 * step
    return score


def _scores(g: Geometry, dark: int) -> tuple[int, int, int, int]:
    light = g.valid ^ dark
    n1d, n2d = _n1_n2(dark, g.stride)
    n1l, n2l = _n1_n2(light, g.stride)
    open_ = light | g.guard
    n3 = _n3(dark, light, open_, 1, g.stride) + _n3(dark, light, open_, g.stride, g.stride)
    percent = float(dark.bit_count()) / (g.size ** 2)
    n4 = 10 * int(abs(percent * 100 - 50) / 5)
    return n1d + n1l, n2d + n2l, n3, n4


def mask_scores(rows: list[bytes]) -> tuple[int, int, int, int]:
    """(N1, N2, N3, N4) of a square matrix of 0/1 modules, as `segno.encoder.mask_scores` computes them."""
    g = geometry(len(rows))
    return _scores(g, g.board(rows))


class Layout(Geometry):
    """A QR version's symbol: the function patterns, where segno places the codeword bits, the masks."""

    def __init__(self, version: int) -> None:
        super().__init__(_enc.calc_matrix_size(version))
        size = self.size
        template = _enc.make_matrix(size, size)
        _enc.add_finder_patterns(template, size, size)
        _enc.add_alignment_patterns(template, size, size)
        free = [(i, j) for i in range(size) for j in range(size) if template[i][j] == 0x2]
        # Learn segno's placement order: place the bit numbers themselves.
        numbered = [list(row) for row in template]
        _enc.add_codewords(numbered, [3 + k for k in range(len(free))], version)
        order = sorted(free, key=lambda ij: numbered[ij[0]][ij[1]])
        self.bits = len(order)
        self.fixed_dark = self.board([bytes(1 if v == 0x1 else 0 for v in row) for row in template])
        position = {self.bit(i, j): k for k, (i, j) in enumerate(order)}
        # The board string is read with int(s, 2): its first character is the board's highest bit.
        self.gather = [position.get(b, self.bits) for b in range(self.length - 1, -1, -1)]
        self._gather = itemgetter(*self.gather)
        data = set(free)
        self.masks = [self.board([bytes(1 if (i, j) in data and fn(i, j) else 0 for j in range(size))
                                  for i in range(size)])
                      for fn in _enc.get_data_mask_functions(False)]

    def place(self, bits: int) -> int:
        """The board of the 1 bits of the `self.bits`-bit message `bits` (first placed bit highest)."""
        src = format(bits, f"0{self.bits}b").encode() + b"0"   # bytes: the gather gives ints
        return int(bytes(self._gather(src)), 2)


@functools.lru_cache(maxsize=8)
def layout(version: int) -> Layout:
    return Layout(version)


@functools.lru_cache(maxsize=8)
def _rs_rows(n: int) -> tuple[int, ...]:
    """For each factor 0..255: the factor times the generator polynomial of `n` error codewords,
    as one integer of `n` bytes (what a Reed-Solomon shift register XORs in)."""
    exp, log, gen = consts.GALIOS_EXP, consts.GALIOS_LOG, consts.GEN_POLY[n]
    rows = [0]
    for coef in range(1, 256):
        lc = log[coef]
        rows.append(int.from_bytes(bytes(exp[lc + g] for g in gen), "big"))
    return tuple(rows)


def _error_block(block: bytes, n: int) -> bytes:
    """The `n` Reed-Solomon error codewords of a data block (segno's `make_blocks`)."""
    rows = _rs_rows(n)
    shift, full = 8 * (n - 1), (1 << (8 * n)) - 1
    rem = 0
    for byte in block:
        rem = ((rem << 8) & full) ^ rows[byte ^ (rem >> shift)]
    return rem.to_bytes(n, "big")


_REMAINDER = {**dict.fromkeys((2, 3, 4, 5, 6), 7),
              **dict.fromkeys((14, 15, 16, 17, 18, 19, 20, 28, 29, 30, 31, 32, 33, 34), 3),
              **dict.fromkeys((21, 22, 23, 24, 25, 26, 27), 4)}


def _segments(value: str) -> Any:
    """segno's `prepare_data(value, None, None)`; a byte mode segment (a URL) made here, its bits
    from one integer instead of segno's eight-bit generator per byte (~0.03 ms of a certificate's)."""
    data, length, encoding = _enc.data_to_bytes(value, None)
    mode = _enc.find_mode(data)
    if mode != consts.MODE_BYTE or not length:
        return _enc.prepare_data(value, None, None)
    bits = bytearray(format(int.from_bytes(data, "big"), f"0{8 * length}b").encode().translate(_FROM_ASCII))
    segments = _enc.Segments()
    segments.add_segment(_enc._Segment(bits, length, mode, encoding))
    return segments


def _interleaved(blocks: list[bytes]) -> bytes:
    """The blocks' bytes column by column, a shorter block's column skipped (segno's
    `make_final_message`): by slice assignment when the blocks differ by one byte at most, as a
    symbol's do (~12 us less than the generator over zip_longest)."""
    n = len(blocks)
    short = min(map(len, blocks))
    if max(map(len, blocks)) - short > 1:
        return bytes(x for x in (b for group in zip_longest(*blocks) for b in group) if x is not None)
    out = bytearray(short * n)
    for i, block in enumerate(blocks):
        out[i::n] = block[:short]
    out += bytes(block[short] for block in blocks if len(block) > short)
    return bytes(out)


def _message(value: str) -> tuple[int, int, int, int]:
    """segno's `encode` + `_encode` up to the final message, for error level M, no boost, no ECI:
    (version, error level, the message bits as one integer, their number)."""
    error = _enc.normalize_errorlevel("m", accept_none=True)
    segments = _segments(value)
    version = _enc.find_version(segments, error, eci=False, micro=False)
    buff = _enc.Buffer()
    ver_range = _enc.version_range(version)
    for segment in segments:
        _enc.write_segment(buff, segment, None, ver_range, False)
    capacities: Any = consts.SYMBOL_CAPACITY
    capacity = capacities[version][error]
    _enc.write_terminator(buff, capacity, None, len(buff))
    _enc.write_padding_bits(buff, version, len(buff))
    _enc.write_pad_codewords(buff, version, capacity, len(buff))
    bits = buff.getbits()
    data = int(bytes(bits).translate(_TO_ASCII), 2).to_bytes(len(bits) // 8, "big")
    data_blocks: list[bytes] = []
    error_blocks: list[bytes] = []
    at = 0
    ecc: Any = consts.ECC
    for info in ecc[version][error]:
        for _ in range(info.num_blocks):
            block = data[at:at + info.num_data]
            at += info.num_data
            data_blocks.append(block)
            error_blocks.append(_error_block(block, info.num_total - info.num_data))
    final = _interleaved(data_blocks) + _interleaved(error_blocks)
    remainder = _REMAINDER.get(version, 0)
    return version, error, int.from_bytes(final, "big") << remainder, 8 * len(final) + remainder


def masked_boards(value: str) -> tuple[Layout, int, int, list[int]]:
    """(layout, version, error level, the dark modules' board under each of the eight masks)."""
    version, error, bits, count = _message(value)
    lay = layout(version)
    assert count == lay.bits, (count, lay.bits)
    placed = lay.place(bits) | lay.fixed_dark
    return lay, version, error, [placed ^ m for m in lay.masks]


def best_mask(lay: Layout, boards: list[int]) -> int:
    """The mask with the lowest penalty, the first of equals (as segno chooses)."""
    return min(range(len(boards)), key=lambda k: sum(_scores(lay, boards[k])))


def matrix(value: str) -> Matrix:
    """The module matrix of the QR code (error correction M) of `value`, one bytearray a row, 1 = dark:
    the same as `segno.make_qr(value, error="m", boost_error=False).matrix`."""
    lay, version, error, boards = masked_boards(value)
    best = best_mask(lay, boards)
    out = tuple(lay.rows(boards[best]))
    _enc.add_format_info(out, version, error, best)
    _enc.add_version_info(out, version)
    return out
