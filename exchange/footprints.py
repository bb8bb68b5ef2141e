"""Footprints: events, organisations and people, line by line from the emission-factor table.

Each line is an activity × a factor row resolved by `registry.factors.resolve` (the most specific
region first: a provincial grid factor for electricity, else national; factors China does not
publish fall back to the UK DESNZ table, and the line says which row it used: key, region, year,
value, unit and source). Arithmetic is exact (`Fraction`); each line shows its exact kg and its grams
rounded half up; the **total is the exact sum rounded up to whole kg**, so offsetting the total
always covers the footprint.

Scopes:
- event (China's large-event carbon-neutral guideline, 《大型活动碳中和实施指南（试行）》 2019):
  venue fuels and purchased electricity (provincial grid factor) and heat; attendee and staff
  travel by mode and distance; hotel room-nights; meals by type; materials; waste.
- organisation: scope 1 fuels; scope 2 electricity and heat; business travel; commuting.
- personal: household electricity, gas and water; car; public transit; flights; diet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from exchange.offset_models import Footprint, FootprintKind
from registry import audit
from registry.actors import Actor
from registry.calculators.base import Activity, fmt, lookup, round_half_up
from registry.errors import InvalidInput, NotFound
from registry.factors import FactorRow, FactorSource

FALLBACK = ("GB",)   # UK DESNZ rows stand in where no Chinese factor is shipped
MAX_DISTANCE_KM = Fraction(40_000)
MAX_PEOPLE = Fraction(10_000_000)
MAX_AMOUNT = Fraction(10**12)


@dataclass(frozen=True, slots=True)
class Mode:
    key: str
    per: str              # pkm (per passenger) or vkm (per vehicle: divided by occupancy)


MODES: dict[str, Mode] = {
    "flight_domestic": Mode("transport.flight.domestic.no_rf", "pkm"),
    "flight_short_haul": Mode("transport.flight.short_haul.economy.no_rf", "pkm"),
    "flight_long_haul": Mode("transport.flight.long_haul.economy.no_rf", "pkm"),
    "hsr": Mode("transport.rail.hsr", "pkm"),
    "rail": Mode("transport.rail.national", "pkm"),
    "metro": Mode("transport.metro", "pkm"),
    "light_rail": Mode("transport.light_rail", "pkm"),
    "bus": Mode("transport.bus", "pkm"),
    "coach": Mode("transport.coach", "pkm"),
    "taxi": Mode("transport.taxi", "pkm"),
    "car": Mode("transport.car.petrol", "vkm"),
    "car_diesel": Mode("transport.car.diesel", "vkm"),
    "car_hybrid": Mode("transport.car.hybrid", "vkm"),
    "car_ev": Mode("transport.car.bev", "vkm"),
    "motorbike": Mode("transport.motorbike", "vkm"),
}
FLIGHT_MODES = tuple(m for m in MODES if m.startswith("flight_"))
TRANSIT_MODES = ("hsr", "rail", "metro", "light_rail", "bus", "coach", "taxi")
CAR_MODES = ("car", "car_diesel", "car_hybrid", "car_ev", "motorbike")
# fuel → (factor key, activity unit the quantity is given in)
FUELS: dict[str, tuple[str, str]] = {
    "natural_gas": ("fuel.natural_gas", "m3"),
    "gasoline": ("fuel.gasoline.litre", "L"),
    "diesel": ("fuel.diesel.litre", "L"),
    "lpg": ("fuel.lpg", "kg"),
}
MEALS = ("vegan", "vegetarian", "pescatarian", "low_meat", "medium_meat", "high_meat")
MATERIALS = {"paper": "material.paper", "plastics": "material.plastics", "food_drink": "material.food_drink"}
# Only streams with a non-negative factor: a footprint does not net avoided emissions.
WASTE = {"residual_landfill": "waste.residual.landfill", "food_landfill": "waste.food.landfill",
         "food_composting": "waste.food.composting", "mixed_landfill": "waste.msw.mixed_landfill"}


@dataclass(frozen=True)
class Breakdown:
    kind: FootprintKind
    name: str
    region: str
    year: int
    inputs: dict[str, Any]
    lines: list[dict[str, Any]]
    exact_g: Fraction

    @property
    def total_kg(self) -> int:
        """The exact total rounded up to whole kg."""
        return -(-self.exact_g.numerator // (self.exact_g.denominator * 1000))

    @property
    def exact_kg(self) -> str:
        return fmt(self.exact_g / 1000)


class _Lines:
    """Collects line items against one region and year."""

    def __init__(self, factors: FactorSource | None, region: str, year: int) -> None:
        self.factors, self.region, self.year = factors, region, year
        self.items: list[dict[str, Any]] = []
        self.total = Fraction(0)

    def add(self, scope: str, activity: str, quantity: Fraction, unit: str, key: str,
            fallback: Sequence[str] = FALLBACK) -> None:
        if quantity == 0:
            return
        row: FactorRow = lookup(self.factors, key, self.region, self.year, fallback)
        grams = quantity * row.grams_per(unit)
        self.total += grams
        self.items.append({"scope": scope, "activity": activity, "quantity": fmt(quantity), "unit": unit,
                           "factor": row.cite(), "kg": fmt(grams / 1000), "g": round_half_up(grams)})


def _mapping(data: Mapping[str, Any], name: str, prefix: str) -> Mapping[str, Any]:
    raw = data.get(name)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{prefix}{name} must be an object", field=f"{prefix}{name}")
    return raw


def _rows(data: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    raw = data.get(name)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput(f"{name} must be a list", field=name)
    for i, r in enumerate(raw):
        if not isinstance(r, Mapping):
            raise InvalidInput(f"{name}.{i} must be an object", field=f"{name}.{i}")
    return raw


def _flag(a: Activity, name: str) -> bool:
    raw = a.data.get(name, False)
    if not isinstance(raw, bool):
        raise InvalidInput(f"{a.prefix}{name} must be true or false", field=f"{a.prefix}{name}")
    a.echo[name] = raw
    return raw


def _travel(lines: _Lines, data: Mapping[str, Any], name: str, scope: str,
            modes: Sequence[str] = tuple(MODES)) -> None:
    """Rows of {mode, people (default 1), distance_km (one way), round_trip (default false),
    days (default 1), occupancy (cars: people per vehicle, default 1)}:
    pkm = people × distance × (2 if round trip) × days; vehicle modes use vkm = pkm ÷ occupancy."""
    for i, r in enumerate(_rows(data, name)):
        a = Activity(r, f"{name}.{i}.")
        mode = a.choice("mode", modes)
        people = a.number("people", default="1", positive=True, maximum=MAX_PEOPLE)
        km = a.number("distance_km", positive=True, maximum=MAX_DISTANCE_KM)
        days = a.number("days", default="1", positive=True, maximum=Fraction(366))
        trip = 2 if _flag(a, "round_trip") else 1
        pkm = people * km * trip * days
        m = MODES[mode]
        what = f"{mode}: {fmt(people)} × {fmt(km)} km{' × 2 (return)' if trip == 2 else ''} × {fmt(days)} day(s)"
        if m.per == "vkm":
            occ = a.number("occupancy", default="1", positive=True, maximum=Fraction(60))
            lines.add(scope, f"{what} ÷ {fmt(occ)} per vehicle", pkm / occ, "vkm", m.key)
        else:
            lines.add(scope, what, pkm, "pkm", m.key)


def _fuels(lines: _Lines, data: Mapping[str, Any], name: str, scope: str) -> None:
    """Rows of {fuel, quantity} in m3 (natural gas), L (gasoline, diesel) or kg (LPG)."""
    for i, r in enumerate(_rows(data, name)):
        a = Activity(r, f"{name}.{i}.")
        fuel = a.choice("fuel", tuple(FUELS))
        key, unit = FUELS[fuel]
        q = a.number("quantity", positive=True, maximum=MAX_AMOUNT)
        lines.add(scope, f"{fuel}: {fmt(q)} {unit}", q, unit, key)


def _energy(lines: _Lines, a: Activity, scope: str) -> None:
    kwh = a.number("electricity_kwh", default="0", maximum=MAX_AMOUNT)
    lines.add(scope, f"purchased electricity {fmt(kwh)} kWh (grid {lines.region})", kwh, "kWh",
              "grid.average", ())
    gj = a.number("heat_gj", default="0", maximum=MAX_AMOUNT)
    lines.add(scope, f"purchased heat {fmt(gj)} GJ", gj, "GJ", "heat.purchased", ())


def _keyed(lines: _Lines, data: Mapping[str, Any], name: str, field: str, keys: Mapping[str, str],
           scope: str) -> None:
    """Rows of {<field>, kg}: materials used or waste produced."""
    for i, r in enumerate(_rows(data, name)):
        a = Activity(r, f"{name}.{i}.")
        what = a.choice(field, tuple(keys))
        kg = a.number("kg", positive=True, maximum=MAX_AMOUNT)
        lines.add(scope, f"{what}: {fmt(kg)} kg", kg, "kg", keys[what])


def _event(lines: _Lines, data: Mapping[str, Any]) -> None:
    venue = Activity(_mapping(data, "venue", ""), "venue.")
    _energy(lines, venue, "venue_energy")
    _fuels(lines, venue.data, "fuels", "venue_energy")
    _travel(lines, data, "attendee_travel", "attendee_travel")
    _travel(lines, data, "staff_travel", "staff_travel")
    top = Activity(data)
    nights = top.number("hotel_room_nights", default="0", maximum=MAX_AMOUNT)
    lines.add("accommodation", f"hotel {fmt(nights)} room-nights", nights, "room-night", "hotel.room_night")
    for i, r in enumerate(_rows(data, "meals")):
        a = Activity(r, f"meals.{i}.")
        kind = a.choice("type", MEALS)
        n = a.number("count", positive=True, maximum=MAX_AMOUNT)
        lines.add("catering", f"{fmt(n)} {kind} meals", n, "meal", f"meal.{kind}")
    _keyed(lines, data, "materials", "material", MATERIALS, "materials")
    _keyed(lines, data, "waste", "stream", WASTE, "waste")


def _organisation(lines: _Lines, data: Mapping[str, Any]) -> None:
    _fuels(lines, data, "fuels", "scope1_fuels")
    _energy(lines, Activity(data), "scope2_energy")
    _travel(lines, data, "business_travel", "business_travel")
    _travel(lines, data, "commuting", "commuting")


def _personal(lines: _Lines, data: Mapping[str, Any]) -> None:
    top = Activity(data)
    kwh = top.number("electricity_kwh", default="0", maximum=MAX_AMOUNT)
    lines.add("home_energy", f"electricity {fmt(kwh)} kWh (grid {lines.region})", kwh, "kWh", "grid.average", ())
    gas = top.number("gas_m3", default="0", maximum=MAX_AMOUNT)
    lines.add("home_energy", f"natural gas {fmt(gas)} m3", gas, "m3", "fuel.natural_gas")
    water = top.number("water_m3", default="0", maximum=MAX_AMOUNT)
    lines.add("water", f"water supply {fmt(water)} m3", water, "m3", "water.supply")
    lines.add("water", f"water treatment {fmt(water)} m3", water, "m3", "water.treatment")
    _travel(lines, data, "car", "car", CAR_MODES)
    _travel(lines, data, "transit", "transit", TRANSIT_MODES)
    _travel(lines, data, "flights", "flights", FLIGHT_MODES)
    diet = _mapping(data, "diet", "")
    if diet:
        a = Activity(diet, "diet.")
        kind = a.choice("type", MEALS)
        days = a.number("days", positive=True, maximum=Fraction(366))
        meals = days * 3
        lines.add("diet", f"{kind} diet {fmt(days)} days × 3 meals", meals, "meal", f"meal.{kind}")


_KEYS: dict[FootprintKind, tuple[Callable[[_Lines, Mapping[str, Any]], None], frozenset[str]]] = {
    FootprintKind.EVENT: (_event, frozenset({"venue", "attendee_travel", "staff_travel", "hotel_room_nights",
                                             "meals", "materials", "waste"})),
    FootprintKind.ORGANISATION: (_organisation, frozenset({"fuels", "electricity_kwh", "heat_gj",
                                                           "business_travel", "commuting"})),
    FootprintKind.PERSONAL: (_personal, frozenset({"electricity_kwh", "gas_m3", "water_m3", "car", "transit",
                                                   "flights", "diet"})),
}
COMMON_KEYS = frozenset({"name", "region", "year"})


def calculate(kind: str, inputs: Mapping[str, Any], factors: FactorSource | None = None) -> Breakdown:
    """The footprint of `inputs` (see the module docstring). `factors`: a FactorTable, a Session
    (shipped plus operator rows) or None (the shipped table). Raises InvalidInput naming the field
    (e.g. "attendee_travel.0.mode"), NotFound if no factor applies in the region and year."""
    try:
        fkind = FootprintKind(kind)
    except ValueError:
        raise InvalidInput(f"kind must be one of {', '.join(k.value for k in FootprintKind)}",
                           field="kind") from None
    if not isinstance(inputs, Mapping):
        raise InvalidInput("inputs must be an object", field="inputs")
    compute, keys = _KEYS[fkind]
    for k in inputs:
        if k not in keys | COMMON_KEYS:
            raise InvalidInput(f"unknown input {k!r} for a {fkind.value} footprint; expected "
                               f"{', '.join(sorted(keys))}", field=str(k))
    top = Activity(inputs)
    name = top.text("name")
    if len(name) > 200:
        raise InvalidInput("name is longer than 200 characters", field="name")
    region = top.region()
    year = top.year() if inputs.get("year") is not None else dt.datetime.now(dt.UTC).year
    lines = _Lines(factors, region, year)
    compute(lines, inputs)
    if not lines.items:
        raise InvalidInput(f"no activity given: fill in at least one of {', '.join(sorted(keys))}",
                           field=sorted(keys)[0])
    return Breakdown(fkind, name, region, year, dict(inputs), lines.items, lines.total)


def as_dict(fp: Footprint) -> dict[str, Any]:
    return {"id": fp.id, "kind": fp.kind.value, "name": fp.name, "region": fp.region, "year": fp.year,
            "inputs": fp.inputs, "lines": fp.lines, "exact_kg": fp.exact_kg, "total_kg": fp.total_kg,
            "rounding": "total_kg is the exact sum of the lines rounded up to whole kg",
            "reductions": fp.reductions, "created_at": fp.created_at}


def _notes(reductions: object) -> list[str]:
    if reductions is None:
        return []
    if not isinstance(reductions, list) or not all(isinstance(r, str) and r.strip() for r in reductions):
        raise InvalidInput("reductions must be a list of non-empty texts", field="reductions")
    return [r.strip() for r in reductions]


def create_footprint(session: Session, actor: Actor, kind: str, inputs: Mapping[str, Any], *,
                     reductions: list[str] | None = None) -> Footprint:
    """Calculate and store a footprint owned by the actor's holder (factors from the database, so
    operator-added years count). Raises InvalidInput naming the field, NotFound for a missing factor."""
    b = calculate(kind, inputs, session)
    fp = Footprint(holder_id=actor.holder_id, created_by_id=actor.user_id, kind=b.kind, name=b.name,
                   region=b.region, year=b.year, inputs=b.inputs, lines=b.lines, exact_kg=b.exact_kg,
                   total_kg=b.total_kg, reductions=_notes(reductions))
    session.add(fp)
    session.flush()
    audit.record(session, actor, "footprint.created", "footprint", fp.id,
                 {"kind": b.kind.value, "name": b.name, "total_kg": b.total_kg, "exact_kg": b.exact_kg,
                  "factors": sorted({f"{ln['factor']['key']}@{ln['factor']['region']}/{ln['factor']['year']}"
                                     for ln in b.lines})})
    return fp


def get_footprint(session: Session, actor: Actor | None, footprint_id: int, *, lock: bool = False) -> Footprint:
    """The actor's own footprint (an operator may read any); another holder's is NotFound."""
    fp = session.get(Footprint, footprint_id, with_for_update={"key_share": True} if lock else None)
    if fp is None or actor is None or (fp.holder_id != actor.holder_id and not actor.is_operator):
        raise NotFound(f"no footprint {footprint_id}", field="footprint_id")
    return fp


def set_reductions(session: Session, actor: Actor, footprint_id: int, reductions: list[str]) -> Footprint:
    """Replace the organiser's notes on the reductions made before offsetting (shown in the
    neutrality statement)."""
    fp = get_footprint(session, actor, footprint_id, lock=True)
    if fp.holder_id != actor.holder_id:
        raise NotFound(f"no footprint {footprint_id}", field="footprint_id")
    fp.reductions = _notes(reductions)
    audit.record(session, actor, "footprint.reductions_set", "footprint", fp.id, {"reductions": fp.reductions})
    return fp


def footprints_of(session: Session, holder_id: int, limit: int = 100) -> list[Footprint]:
    return list(session.scalars(select(Footprint).where(Footprint.holder_id == holder_id)
                                .order_by(Footprint.id.desc()).limit(limit)))
