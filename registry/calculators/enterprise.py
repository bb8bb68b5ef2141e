"""Small-enterprise projects (CCER-style, accounting reference §3.2): rooftop PV, energy-efficiency
retrofit, waste-heat recovery. Electricity uses the provincial average grid factor (`grid.average`,
falling back to the national one), as carbon-inclusion schemes do (CCER would use the combined margin).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from registry.calculators.base import Activity, Calculation, build, fmt, lookup
from registry.factors import FactorSource

MAX_MWH = Fraction(10**7)

# energy carrier → (factor key, activity unit of the quantities given)
CARRIERS: dict[str, tuple[str, str]] = {
    "electricity": ("grid.average", "kWh"),
    "natural_gas": ("fuel.natural_gas", "m3"),
    "gasoline": ("fuel.gasoline", "kg"),
    "diesel": ("fuel.diesel", "kg"),
    "lpg": ("fuel.lpg", "kg"),
}

# Net calorific value of natural gas, GB/T 2589-2020 (the same constant behind fuel.natural_gas):
# 38,931 kJ/m3 = 38.931 MJ/m3. 1 MWh = 3,600 MJ.
NATURAL_GAS_NCV_MJ_PER_M3 = Fraction("38.931")
MJ_PER_MWH = Fraction(3600)


def pv(activity: dict[str, Any], factors: FactorSource | None = None) -> Calculation:
    """CI-PV: rooftop photovoltaics. Activity: generation_mwh (metered export plus own use), optional
    auxiliary_mwh (grid power the plant itself drew), region (province), year.
    BE = MWh generated × 1,000 × EF_grid (g/kWh); PE = auxiliary MWh × 1,000 × EF_grid; LE = 0."""
    a = Activity(activity)
    gen = a.number("generation_mwh", maximum=MAX_MWH)
    aux = a.number("auxiliary_mwh", default="0", maximum=MAX_MWH)
    region, year = a.region(), a.year()
    grid = lookup(factors, "grid.average", region, year)
    g = grid.grams_per("MWh")
    be, pe = gen * g, aux * g
    return build("CI-PV", be=be, pe=pe, rows=[grid], inputs=a.echo,
                 formula=(f"BE = {fmt(gen)} MWh × {fmt(g)} g/MWh ({grid.key} {grid.region} {grid.year}) = "
                          f"{fmt(be)} g; PE = auxiliary {fmt(aux)} MWh × {fmt(g)} g/MWh = {fmt(pe)} g; LE = 0"))


def energy_efficiency(activity: dict[str, Any], factors: FactorSource | None = None) -> Calculation:
    """CI-EE: energy-efficiency retrofit, ER = (SEC_baseline − SEC_project) × output × EF.

    Activity: carrier (electricity kWh | natural_gas m3 | gasoline, diesel, lpg kg), baseline_energy
    and baseline_output (before the retrofit), project_energy and project_output (the monitored
    period), region, year. SEC = energy ÷ output.
    BE = baseline_energy ÷ baseline_output × project_output × EF (what the old plant would have used
    for this period's output); PE = project_energy × EF; LE = 0."""
    a = Activity(activity)
    carrier = a.choice("carrier", tuple(CARRIERS))
    key, unit = CARRIERS[carrier]
    b_energy = a.number("baseline_energy")
    b_output = a.number("baseline_output", positive=True)
    p_energy = a.number("project_energy")
    p_output = a.number("project_output")
    region, year = a.region(), a.year()
    ef = lookup(factors, key, region, year)
    g = ef.grams_per(unit)
    sec = b_energy / b_output
    be, pe = sec * p_output * g, p_energy * g
    return build("CI-EE", be=be, pe=pe, rows=[ef], inputs=a.echo,
                 formula=(f"SEC_baseline = {fmt(b_energy)} ÷ {fmt(b_output)} = {fmt(sec)} {unit}/unit; "
                          f"BE = SEC_baseline × {fmt(p_output)} units × {fmt(g)} g/{unit} = {fmt(be)} g; "
                          f"PE = {fmt(p_energy)} {unit} × {fmt(g)} g/{unit} = {fmt(pe)} g; LE = 0"))


def waste_heat(activity: dict[str, Any], factors: FactorSource | None = None) -> Calculation:
    """CI-HEAT: waste-heat recovery.

    Activity: displaces = "electricity" with net_generation_mwh (power generated from waste heat,
    less the recovery system's own use), or "natural_gas" with heat_mwh (useful heat delivered) and
    boiler_efficiency (of the gas boiler it replaces, 0 < η ≤ 1); region, year.
    Electricity: BE = MWh × EF_grid. Natural gas: gas displaced = heat MWh × 3,600 MJ/MWh ÷
    (38.931 MJ/m3 × η), BE = gas m3 × EF_gas. PE = 0, LE = 0."""
    a = Activity(activity)
    displaces = a.choice("displaces", ("electricity", "natural_gas"))
    region, year = a.region(), a.year()
    if displaces == "electricity":
        mwh = a.number("net_generation_mwh", maximum=MAX_MWH)
        grid = lookup(factors, "grid.average", region, year)
        g = grid.grams_per("MWh")
        be = mwh * g
        return build("CI-HEAT", be=be, pe=Fraction(0), rows=[grid], inputs=a.echo,
                     formula=f"BE = {fmt(mwh)} MWh × {fmt(g)} g/MWh = {fmt(be)} g; PE = 0; LE = 0")
    heat = a.number("heat_mwh", maximum=MAX_MWH)
    eta = a.number("boiler_efficiency", positive=True, maximum=Fraction(1))
    gas = lookup(factors, "fuel.natural_gas", region, year)
    m3 = heat * MJ_PER_MWH / (NATURAL_GAS_NCV_MJ_PER_M3 * eta)
    g = gas.grams_per("m3")
    be = m3 * g
    return build("CI-HEAT", be=be, pe=Fraction(0), rows=[gas], inputs=a.echo,
                 formula=(f"gas displaced = {fmt(heat)} MWh × 3600 MJ/MWh ÷ (38.931 MJ/m3 × {fmt(eta)}) = "
                          f"{fmt(m3)} m3; BE = gas m3 × {fmt(g)} g/m3 = {fmt(be)} g; PE = 0; LE = 0"))
