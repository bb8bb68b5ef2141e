"""Carbon-inclusion calculators, one module per methodology family, registered by code.

Every calculator takes activity data (a mapping) and optionally a factor source (a `FactorTable`,
default the shipped CSV, or a Session for the `emission_factors` table with operator rows), and
returns a `Calculation`: reduction in whole grams (ER = BE − PE − LE, never negative), the formula
with its numbers, the factor rows cited (key, region, year, value, unit, source, id) and the inputs.
Importing this package registers them in `registry.methodologies.CALCULATORS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from registry import methodologies
from registry.calculators.base import Calculation, round_half_up
from registry.calculators.enterprise import energy_efficiency, pv, waste_heat
from registry.calculators.forestry import forest
from registry.calculators.household import household
from registry.calculators.mobility import bike, nev, transit
from registry.calculators.waste import waste
from registry.errors import NotFound
from registry.factors import FactorSource

CalculatorFn = Callable[[dict[str, Any], FactorSource | None], Calculation]

BY_CODE: dict[str, CalculatorFn] = {
    "CI-TRANSIT": transit,
    "CI-BIKE": bike,
    "CI-NEV": nev,
    "CI-WASTE": waste,
    "CI-HOME": household,
    "CI-PV": pv,
    "CI-EE": energy_efficiency,
    "CI-HEAT": waste_heat,
    "CI-FOREST": forest,
}

# Registered one by one so that each keeps its own signature (the optional factor source).
methodologies.register_calculator("CI-TRANSIT")(transit)
methodologies.register_calculator("CI-BIKE")(bike)
methodologies.register_calculator("CI-NEV")(nev)
methodologies.register_calculator("CI-WASTE")(waste)
methodologies.register_calculator("CI-HOME")(household)
methodologies.register_calculator("CI-PV")(pv)
methodologies.register_calculator("CI-EE")(energy_efficiency)
methodologies.register_calculator("CI-HEAT")(waste_heat)
methodologies.register_calculator("CI-FOREST")(forest)


def calculate(code: str, activity: Mapping[str, Any], factors: FactorSource | None = None) -> Calculation:
    """Run the calculator of methodology `code`. Raises NotFound for an unknown code."""
    fn = BY_CODE.get(code)
    if fn is None:
        raise NotFound(f"no calculator for methodology {code}", field="methodology", code="no_calculator")
    return fn(dict(activity), factors)


__all__ = ["BY_CODE", "Calculation", "calculate", "round_half_up"]
