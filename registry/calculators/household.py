"""CI-HOME: household electricity, water and gas saved against a baseline (Yantian 碳币, Shenzhen
《居民低碳用电碳普惠方法学（试行）》 2022, extended to water and gas as accounting reference §3.2 says).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from registry.calculators.base import Activity, Calculation, build, fmt, lookup
from registry.factors import FactorRow, FactorSource

# utility → (activity unit, factor keys whose sum is the EF, fallback regions)
UTILITIES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "electricity": ("kWh", ("grid.average",), ()),
    # saving a cubic metre saves its supply and its treatment (UK DESNZ 2025 until a Chinese row exists)
    "water": ("m3", ("water.supply", "water.treatment"), ("GB",)),
    "gas": ("m3", ("fuel.natural_gas",), ()),
}
MAX_QUANTITY = Fraction(1_000_000)


def household(activity: dict[str, Any], factors: FactorSource | None = None) -> Calculation:
    """One household's use of one utility over one period (e.g. a day), against its baseline.

    Activity: utility ("electricity" kWh | "water" m3 | "gas" m3), actual (this period's use),
    community_average (the community's or city's household average for the same period), optional
    trailing_7day_average (the household's own average per period over the previous 7 days),
    region (the province for electricity), year (or date).

    Rule implemented (Shenzhen residential-electricity methodology, accounting reference §3.2):
    - if actual < community_average: baseline = community_average;
    - otherwise: baseline = trailing_7day_average (rewards a high user who improves on its own
      history); without it there is no reduction.
    ER = max(0, baseline − actual) × EF; reported as BE = baseline × EF, PE = actual × EF, LE = 0.
    A household below the community average is credited against the community average even if its
    own history is higher (a high user cannot claim its own inflated history once below average)."""
    a = Activity(activity)
    utility = a.choice("utility", tuple(UTILITIES))
    unit, keys, fallback = UTILITIES[utility]
    actual = a.number("actual", maximum=MAX_QUANTITY)
    community = a.number("community_average", positive=True, maximum=MAX_QUANTITY)
    own = (a.number("trailing_7day_average", maximum=MAX_QUANTITY)
           if activity.get("trailing_7day_average") not in (None, "") else None)
    region, year = a.region(), a.year()
    rows: list[FactorRow] = [lookup(factors, k, region, year, fallback) for k in keys]
    ef = sum((r.grams_per(unit) for r in rows), Fraction(0))
    if actual < community:
        baseline, rule = community, "actual < community average: baseline = community average"
    elif own is not None:
        baseline, rule = own, "actual ≥ community average: baseline = own trailing 7-day average"
    else:
        baseline, rule = actual, "actual ≥ community average and no 7-day history: no reduction"
    be, pe = baseline * ef, actual * ef
    ef_text = " + ".join(fmt(r.grams_per(unit)) for r in rows)
    return build("CI-HOME", be=be, pe=pe, rows=rows, inputs=a.echo,
                 formula=(f"{rule}; EF = {ef_text} = {fmt(ef)} g/{unit}; BE = {fmt(baseline)} {unit} × EF "
                          f"= {fmt(be)} g; PE = {fmt(actual)} {unit} × EF = {fmt(pe)} g; LE = 0"),
                 notes=[rule])
