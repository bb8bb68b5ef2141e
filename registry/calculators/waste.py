"""CI-WASTE: garbage sorting and recycling by category and weight (Quzhou DB3308/T 102-2022 pattern:
reduction = weight by category × factor; per-kg factor = baseline treatment EF − project treatment EF).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from registry.calculators.base import Activity, Calculation, build, fmt, lookup
from registry.errors import InvalidInput, NotFound
from registry.factors import FactorRow, FactorSource, FactorTable, shipped_table

# category → (baseline treatment factor, project treatment factor, fallback regions). A category not
# listed here uses a per-kg reduction factor `ci.waste.<category>` if the table has one, so operators
# add categories as data.
TREATMENTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # kitchen waste composted instead of landfilled (UK DESNZ 2025 until a Chinese row is added)
    "kitchen": ("waste.food.landfill", "waste.food.composting", ("GB",)),
    # household waste sorted (AD + recycling + incineration) instead of mixed to landfill (Qingdao LCA)
    "sorted_household": ("waste.msw.mixed_landfill", "waste.msw.sorted_treatment", ()),
}
MAX_ITEM_KG = Fraction(100_000)


def waste(activity: dict[str, Any], factors: FactorSource | None = None) -> Calculation:
    """Activity: items = [{category, weight_kg}, ...], region, year (or date).

    For a category in `TREATMENTS`: BE = w × EF_baseline_treatment, PE = w × EF_project_treatment.
    Otherwise (e.g. "recyclables"): BE − PE = w × `ci.waste.<category>` (a published per-kg
    reduction factor, reported as BE with PE = 0). The items add up; LE = 0.
    Raises InvalidInput naming e.g. "items[1].weight_kg", or for an unknown category."""
    a = Activity(activity)
    region, year = a.region(), a.year()
    items = activity.get("items")
    if not isinstance(items, list) or not items:
        raise InvalidInput("items is required: a list of {category, weight_kg}", field="items")
    be = pe = Fraction(0)
    rows: list[FactorRow] = []
    parts: list[str] = []
    echo: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        it = Activity(item, prefix=f"items[{i}].")
        category = it.text("category")
        w = it.number("weight_kg", maximum=MAX_ITEM_KG)
        echo.append(it.echo)
        if category in TREATMENTS:
            base_key, proj_key, fallback = TREATMENTS[category]
            b = lookup(factors, base_key, region, year, fallback)
            p = lookup(factors, proj_key, region, year, fallback)
            ib, ip = w * b.grams_per("kg"), w * p.grams_per("kg")
            rows += [b, p]
            parts.append(f"{category}: BE {fmt(w)} kg × {fmt(b.grams_per('kg'))} g/kg = {fmt(ib)} g, "
                         f"PE {fmt(w)} kg × {fmt(p.grams_per('kg'))} g/kg = {fmt(ip)} g")
        else:
            try:
                rf = lookup(factors, f"ci.waste.{category}", region, year)
            except NotFound:
                known = sorted({*TREATMENTS, *_reduction_categories(factors)})
                raise InvalidInput(f"items[{i}].category {category!r} is unknown (known: {', '.join(known)})",
                                   field=f"items[{i}].category") from None
            ib, ip = w * rf.grams_per("kg"), Fraction(0)
            rows.append(rf)
            parts.append(f"{category}: BE − PE = {fmt(w)} kg × {fmt(rf.grams_per('kg'))} g/kg = {fmt(ib)} g")
        be += ib
        pe += ip
    inputs = a.echo | {"items": echo}
    return build("CI-WASTE", be=be, pe=pe, rows=rows, inputs=inputs,
                 formula="; ".join(parts) + f"; BE = {fmt(be)} g; PE = {fmt(pe)} g; LE = 0")


def _reduction_categories(factors: FactorSource | None) -> set[str]:
    table = factors if isinstance(factors, FactorTable) else shipped_table()
    return {r.key.removeprefix("ci.waste.") for r in table.rows if r.key.startswith("ci.waste.")}
