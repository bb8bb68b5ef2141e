"""CI-FOREST: a small forestry sink (afforestation / forest management), with a non-permanence buffer."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from registry.calculators.base import Activity, Calculation, build, fmt
from registry.factors import FactorSource

CO2_PER_C = Fraction(44, 12)  # molecular mass ratio CO2 : C
DEFAULT_BUFFER_SHARE = "0.20"
T_TO_G = 1_000_000
MAX_TC = Fraction(1_000_000)


def forest(activity: dict[str, Any], factors: FactorSource | None = None) -> Calculation:
    """Activity: delta_c_tc (the project's carbon-stock increase over the period, t C), optional
    baseline_delta_c_tc (what the land would have stored anyway, t C, default 0), leakage_tco2e
    (default 0), buffer_share (non-permanence buffer, default 0.20, at most 1), year.

    Removals count as negative emissions: BE = −baseline ΔC × 44/12, PE = −project ΔC × 44/12, so
    ER = BE − PE − LE = (ΔC_project − ΔC_baseline) × 44/12 − LE (t → g × 10^6). The buffer
    withheld_g = round_half_up(ER × buffer_share) is reported apart; issuable_g = reduction_g −
    withheld_g. No emission-factor row is used (44/12 is a constant); `factors` is accepted for a
    uniform signature."""
    del factors
    a = Activity(activity)
    dc = a.number("delta_c_tc", maximum=MAX_TC)
    dc_base = a.number("baseline_delta_c_tc", default="0", maximum=MAX_TC)
    le_t = a.number("leakage_tco2e", default="0", maximum=MAX_TC * 4)
    share = a.number("buffer_share", default=DEFAULT_BUFFER_SHARE, maximum=Fraction(1))
    a.year()
    be, pe, le = -dc_base * CO2_PER_C * T_TO_G, -dc * CO2_PER_C * T_TO_G, le_t * T_TO_G
    return build("CI-FOREST", be=be, pe=pe, le=le, rows=[], inputs=a.echo, withheld_share=share,
                 formula=(f"PE = −{fmt(dc)} t C × 44/12 = {fmt(pe)} g; BE = −{fmt(dc_base)} t C × 44/12 = "
                          f"{fmt(be)} g; LE = {fmt(le_t)} t CO2e = {fmt(le)} g; buffer = ER × {fmt(share)} "
                          f"withheld"),
                 notes=[f"non-permanence buffer: {fmt(share)} of the reduction is withheld, not issued"])
