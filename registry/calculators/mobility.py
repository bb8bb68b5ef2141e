"""Mobility methodologies: low-carbon public transit, shared bikes, new-energy vehicles.

The mobility rule (accounting reference §3.1): ER_trip = (EF_baseline − EF_mode) × distance, with
EF_baseline the city's passenger-km-weighted average of motorised modes.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from registry.calculators.base import Activity, Calculation, build, fmt, lookup
from registry.errors import NotFound
from registry.factors import FactorSource

TRANSIT_MODES = ("bus", "metro")
MAX_TRIP_KM = Fraction(500)


def transit(activity: dict[str, Any], factors: FactorSource | None = None) -> Calculation:
    """CI-TRANSIT: one public-transit trip (bus or metro) against the city's motorised baseline.

    Activity: mode ("bus" | "metro"), distance_km (passenger-km of the trip), region (the city, e.g.
    "CN-GD-SZ"), year (or date).

    1. Where the city publishes a per-pkm reduction factor `ci.transit.<mode>` (Shenzhen 《低碳公共出行
       碳普惠方法学（试行）》 2021: electric bus 26.9 g/pkm, metro 46.7 g/pkm), BE − PE = RF × d. The
       factor is already EF_baseline − EF_mode, so it is reported as BE with PE = 0.
    2. Otherwise BE = d × `ci.transit.baseline` (the city's motorised average, g/pkm) and
       PE = d × `transport.<mode>` for the same region: a city is added as two factor rows, no code.
    LE = 0. Raises InvalidInput (naming the field) or NotFound (no factor for the region/year)."""
    a = Activity(activity)
    mode = a.choice("mode", TRANSIT_MODES)
    d = a.number("distance_km", maximum=MAX_TRIP_KM)
    region, year = a.region(), a.year()
    try:
        rf = lookup(factors, f"ci.transit.{mode}", region, year)
    except NotFound:
        base = lookup(factors, "ci.transit.baseline", region, year)
        ef = lookup(factors, f"transport.{mode}", region, year)
        be, pe = d * base.grams_per("pkm"), d * ef.grams_per("pkm")
        return build("CI-TRANSIT", be=be, pe=pe, rows=[base, ef], inputs=a.echo,
                     formula=(f"BE = d × EF_baseline = {fmt(d)} pkm × {fmt(base.grams_per('pkm'))} g/pkm "
                              f"= {fmt(be)} g; PE = d × EF_{mode} = {fmt(d)} pkm × "
                              f"{fmt(ef.grams_per('pkm'))} g/pkm = {fmt(pe)} g; LE = 0"))
    g = rf.grams_per("pkm")
    be = d * g
    return build("CI-TRANSIT", be=be, pe=Fraction(0), rows=[rf], inputs=a.echo,
                 formula=(f"BE − PE = d × RF_{mode} = {fmt(d)} pkm × {fmt(g)} g/pkm = {fmt(be)} g "
                          f"(RF = EF_baseline − EF_{mode}, published as one factor {rf.key} "
                          f"{rf.region} {rf.year}); PE reported as 0; LE = 0"),
                 notes=["the published reduction factor nets the mode's own emissions"])


# Share of a ride that replaces a motorised trip, by ride length: short rides replace walking
# (accounting reference §3.2, Guangzhou bike methodology and 黎炜驰 et al. 2016; UNFCCC: walking is
# not a motorised baseline). The band limits and shares are this methodology version's parameters
# (to verify against the published coefficient table): [lower km, upper km) → share.
BIKE_BANDS: tuple[tuple[Fraction, Fraction | None, Fraction], ...] = (
    (Fraction(0), Fraction(1), Fraction(0)),
    (Fraction(1), Fraction(3), Fraction(1, 2)),
    (Fraction(3), None, Fraction(1)),
)
MAX_RIDE_KM = Fraction(50)


def bike_share(distance_km: Fraction) -> Fraction:
    for low, high, share in BIKE_BANDS:
        if distance_km >= low and (high is None or distance_km < high):
            return share
    return Fraction(0)


def bike(activity: dict[str, Any], factors: FactorSource | None = None) -> Calculation:
    """CI-BIKE: one shared-bike ride.

    Activity: distance_km, region (city), year (or date).
    BE = d × c(d) × EF_baseline, with EF_baseline = `ci.bike.baseline` (g/pkm, the city's motorised
    average; Shenzhen ships a conservative proxy) and the distance coefficient c(d) = 0 below 1 km
    (the ride replaces walking), 1/2 from 1 to 3 km, 1 from 3 km (`BIKE_BANDS`). PE = 0 (a pedal
    bike), LE = 0."""
    a = Activity(activity)
    d = a.number("distance_km", maximum=MAX_RIDE_KM)
    region, year = a.region(), a.year()
    base = lookup(factors, "ci.bike.baseline", region, year)
    c = bike_share(d)
    g = base.grams_per("pkm")
    be = d * c * g
    notes = ["ride shorter than 1 km replaces walking: no reduction"] if c == 0 else []
    return build("CI-BIKE", be=be, pe=Fraction(0), rows=[base], inputs=a.echo, notes=notes,
                 formula=(f"BE = d × c(d) × EF_baseline = {fmt(d)} km × {fmt(c)} × {fmt(g)} g/pkm = {fmt(be)} g; "
                          f"PE = 0 (bicycle); LE = 0"))


DEFAULT_FUEL_L_PER_100KM = "8"


def nev(activity: dict[str, Any], factors: FactorSource | None = None) -> Calculation:
    """CI-NEV: kilometres driven by a battery-electric car instead of a petrol car (T/CSAE 235-2021).

    Activity: distance_km, kwh_per_100km (the vehicle's electricity use, at the plug), region (for the
    grid factor, e.g. "CN-GD"), year; optional fuel_l_per_100km of the baseline petrol car (default 8,
    accounting reference §2 row 29, to verify).
    BE = km × fuel L/km × EF_gasoline (`fuel.gasoline.litre`); PE = km × kWh/km × EF_grid
    (`grid.average`, provincial where published, else national); LE = 0."""
    a = Activity(activity)
    d = a.number("distance_km", maximum=Fraction(5000))
    kwh = a.number("kwh_per_100km", positive=True, maximum=Fraction(100))
    litres = a.number("fuel_l_per_100km", default=DEFAULT_FUEL_L_PER_100KM, positive=True,
                      maximum=Fraction(50))
    region, year = a.region(), a.year()
    fuel = lookup(factors, "fuel.gasoline.litre", region, year)
    grid = lookup(factors, "grid.average", region, year)
    fuel_l, kwh_used = d * litres / 100, d * kwh / 100
    be, pe = fuel_l * fuel.grams_per("L"), kwh_used * grid.grams_per("kWh")
    return build("CI-NEV", be=be, pe=pe, rows=[fuel, grid], inputs=a.echo,
                 formula=(f"BE = km × L/100km ÷ 100 × EF_gasoline = {fmt(fuel_l)} L × "
                          f"{fmt(fuel.grams_per('L'))} g/L = {fmt(be)} g; PE = km × kWh/100km ÷ 100 × EF_grid = "
                          f"{fmt(kwh_used)} kWh × {fmt(grid.grams_per('kWh'))} g/kWh = {fmt(pe)} g; LE = 0"))
