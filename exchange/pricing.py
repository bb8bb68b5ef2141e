"""Integer money arithmetic: notional, fees, bands. No float touches an amount."""

from __future__ import annotations


def div_half_up(numerator: int, denominator: int) -> int:
    """round_half_up(numerator / denominator) for non-negative integers."""
    if numerator < 0 or denominator <= 0:
        raise ValueError("div_half_up takes a non-negative numerator and a positive denominator")
    return (2 * numerator + denominator) // (2 * denominator)


def div_ceil(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def notional(price_per_t: int, qty_kg: int) -> int:
    """What a fill costs: round_half_up(price × qty_kg / 1000), minor units, computed once."""
    return div_half_up(price_per_t * qty_kg, 1000)


def fee(amount: int, bp: int) -> int:
    """A fee of `bp` basis points on `amount`, rounded half up."""
    return div_half_up(amount * bp, 10_000)


def buy_hold(limit_price: int, qty_kg: int, lot_kg: int, fee_bp: int) -> int:
    """The cash a buy order reserves: the notional at its limit plus the largest fee, plus one
    minor unit per possible fill (whole lots) to cover half-up rounding of each fill."""
    base = div_ceil(limit_price * qty_kg, 1000)
    return base + div_ceil(base * fee_bp, 10_000) + div_ceil(qty_kg, lot_kg)


def band_around(reference: int, band_bp: int, tick: int) -> tuple[int, int]:
    """(low, high) within ±band_bp of `reference`, on the tick grid and never below one tick."""
    low = div_ceil(reference * (10_000 - band_bp), 10_000 * tick) * tick
    high = (reference * (10_000 + band_bp)) // (10_000 * tick) * tick
    return max(low, tick), max(high, tick)
