"""Emission factors: the shipped CSV, exact values, resolution, the table, operator rows."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from sqlalchemy import select

from registry import calculators, factors
from registry.errors import Conflict, Forbidden, InvalidInput, NotFound
from registry.factors import EmissionFactor, FactorTable, make_row, resolve, shipped_table
from registry.models import AuditRecord, HolderKind
from tests.factories import party


def _value(key: str, region: str, year: int) -> str:
    [row] = [r for r in shipped_table().rows if (r.key, r.region, r.year) == (key, region, year)]
    return row.value


# -- the shipped CSV ----------------------------------------------------------------------------

def test_csv_has_the_national_grid_factors_2021_to_2023():
    assert _value("grid.average", "CN", 2021) == "0.5568"
    assert _value("grid.average", "CN", 2022) == "0.5366"
    assert _value("grid.average", "CN", 2023) == "0.5306"


@pytest.mark.parametrize("region, value", [("CN-GD", "0.4419"), ("CN-SC", "0.1564"), ("CN-ZJ", "0.4974"),
                                           ("CN-BJ", "0.5554"), ("CN-SH", "0.5737")])
def test_csv_has_the_provincial_2023_grid_factors(region, value):
    assert _value("grid.average", region, 2023) == value


def test_csv_covers_the_required_activities():
    keys = {r.key for r in shipped_table().rows}
    required = {
        "fuel.natural_gas", "fuel.gasoline", "fuel.diesel", "fuel.lpg",
        "transport.car.petrol", "transport.taxi", "transport.bus", "transport.metro", "transport.rail.hsr",
        "transport.flight.domestic.rf", "transport.flight.domestic.no_rf",
        "transport.flight.long_haul.economy.rf", "transport.flight.long_haul.economy.no_rf",
        "hotel.room_night", "meal.vegan", "meal.vegetarian", "meal.medium_meat", "meal.high_meat",
        "water.supply", "water.treatment", "waste.food.landfill", "waste.food.composting",
        "waste.msw.mixed_landfill", "waste.msw.sorted_treatment",
        "ci.transit.bus", "ci.transit.metro",
    }
    assert required <= keys
    assert _value("ci.transit.bus", "CN-GD-SZ", 2021) == "26.9"
    assert _value("ci.transit.metro", "CN-GD-SZ", 2021) == "46.7"


def test_every_csv_row_has_a_source_and_a_consistent_unit():
    for r in shipped_table().rows:
        assert r.source.strip(), r
        assert r.unit.split(" ")[1].split("/")[0] == r.gas_basis
        r.exact  # parses exactly  # noqa: B018


def test_unverified_rows_are_marked():
    # accounting.md marks these [M]: the source says "(to verify)"
    for key, region, year in [("grid.enterprise_reporting", "CN", 2023), ("fuel.gasoline.litre", "CN", 2020),
                              ("transport.car.petrol", "CN", 2020)]:
        [row] = [r for r in shipped_table().rows if (r.key, r.region, r.year) == (key, region, year)]
        assert "(to verify)" in row.source


def test_values_convert_to_exact_grams():
    grid = shipped_table().resolve("grid.average", "CN", 2023)
    assert grid.grams_per("kWh") == Fraction(5306, 10)        # 0.5306 kg/kWh = 530.6 g/kWh
    assert grid.grams_per("MWh") == 530_600
    rep = shipped_table().resolve("grid.enterprise_reporting", "CN", 2024)
    assert rep.grams_per("kWh") == Fraction(5703, 10)         # 0.5703 t/MWh = 570.3 g/kWh
    with pytest.raises(InvalidInput) as e:
        grid.grams_per("m3")
    assert e.value.field == "unit"


# -- resolution ---------------------------------------------------------------------------------

def test_province_beats_national():
    assert shipped_table().resolve("grid.average", "CN-GD", 2023).value == "0.4419"
    # a city inherits its province; a province without a row falls back to the nation
    assert shipped_table().resolve("grid.average", "CN-GD-SZ", 2023).region == "CN-GD"
    assert shipped_table().resolve("grid.average", "CN-HB", 2023).region == "CN"


def test_latest_year_not_after_the_requested_year():
    t = shipped_table()
    assert (t.resolve("grid.average", "CN", 2022).year, t.resolve("grid.average", "CN", 2022).value) == (2022, "0.5366")
    assert t.resolve("grid.average", "CN", 2026).year == 2023
    # Guangdong has only 2023: asking for 2022 falls back to the national 2022 factor
    row = t.resolve("grid.average", "CN-GD", 2022)
    assert (row.region, row.year) == ("CN", 2022)
    with pytest.raises(NotFound) as e:
        t.resolve("grid.average", "CN", 2020)
    assert e.value.field == "region"


def test_validity_window_excludes_expired_rows():
    with pytest.raises(NotFound):
        shipped_table().resolve("grid.enterprise_reporting", "CN", 2026)     # valid 2023-2025


def test_fallback_regions_come_after_the_chain():
    assert shipped_table().resolve("water.supply", "CN-GD", 2025, ("GB",)).region == "GB"
    with pytest.raises(NotFound):
        shipped_table().resolve("water.supply", "CN-GD", 2025)
    # GLOBAL rows apply everywhere
    assert shipped_table().resolve("meal.vegan", "CN-GD-SZ", 2024).region == "GLOBAL"


def test_a_year_added_as_data_is_used_without_code_change():
    extra = make_row(key="grid.average", value="0.5100", unit="kg CO2/kWh", gas_basis="CO2", region="CN",
                     year=2024, source="hypothetical 2024 announcement", origin="operator")
    t = shipped_table().with_rows(extra)
    assert t.resolve("grid.average", "CN", 2025).value == "0.5100"
    assert t.resolve("grid.average", "CN", 2023).value == "0.5306"
    calc = calculators.calculate("CI-PV", {"generation_mwh": 1, "region": "CN-HB", "year": 2025}, t)
    # 1 MWh × 510,000 g/MWh = 510,000 g
    assert calc.reduction_g == 510_000
    assert calc.factors[0]["year"] == 2024


@pytest.mark.parametrize("field, kw", [
    ("key", {"key": "Grid Average"}),
    ("value", {"value": "abc"}),
    ("value", {"value": 0.5}),
    ("unit", {"unit": "kg/kWh"}),
    ("unit", {"unit": "kg CO2e/kWh"}),
    ("gas_basis", {"gas_basis": "CH4"}),
    ("region", {"region": "guangdong"}),
    ("year", {"year": 1800}),
    ("source", {"source": " "}),
    ("valid_to", {"valid_from": "2024-01-01", "valid_to": "2023-01-01"}),
])
def test_bad_rows_name_the_field(field, kw):
    args = dict(key="grid.average", value="0.5", unit="kg CO2/kWh", gas_basis="CO2", region="CN", year=2024,
                source="x") | kw
    with pytest.raises(InvalidInput) as e:
        make_row(**args)
    assert e.value.field == field


def test_csv_errors_name_the_line():
    text = ",".join(factors.CSV_COLUMNS) + "\ngrid.average,0.5,kg CO2/kWh,CO2,CN,20x3,src,,\n"
    with pytest.raises(InvalidInput) as e:
        factors.read_csv(text)
    assert e.value.field == "year" and "line 2" in e.value.message


def test_duplicate_rows_are_refused():
    row = shipped_table().rows[0]
    with pytest.raises(Conflict):
        FactorTable([row, row])


# -- the table (SQLite and PostgreSQL) ----------------------------------------------------------

def test_sync_is_idempotent_and_resolution_matches_the_csv(session):
    first = factors.sync_shipped(session)
    assert first.inserted == len(shipped_table().rows) and first.updated == 0
    second = factors.sync_shipped(session)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, len(shipped_table().rows))
    session.commit()
    row = resolve(session, "grid.average", "CN-GD-SZ", 2024)
    assert (row.region, row.year, row.value) == ("CN-GD", 2023, "0.4419")
    assert row.id is not None
    assert session.scalar(select(EmissionFactor.origin).where(EmissionFactor.id == row.id)) == "shipped"
    assert FactorTable.from_session(session).resolve("grid.average", "CN", 2021).value == "0.5568"


def test_sync_updates_a_changed_shipped_row_but_never_an_operator_row(session):
    op = party(session, HolderKind.OPERATOR)
    factors.add_factor(session, op.actor, key="grid.average", value="0.4300", unit="kg CO2/kWh",
                       gas_basis="CO2", region="CN-GD", year=2023, source="operator correction")
    factors.sync_shipped(session)
    assert resolve(session, "grid.average", "CN-GD", 2023).value == "0.4300"   # operator row kept
    patched = FactorTable(r if (r.key, r.region, r.year) != ("grid.average", "CN", 2023)
                          else make_row(key=r.key, value="0.5310", unit=r.unit, gas_basis=r.gas_basis,
                                        region=r.region, year=r.year, source=r.source + " (corrected)")
                          for r in shipped_table().rows)
    report = factors.sync_shipped(session, patched)
    assert (report.updated, report.operator_kept) == (1, 1)
    assert resolve(session, "grid.average", "CN", 2023).value == "0.5310"
    session.commit()
    payloads = [json.loads(p) for p in session.scalars(
        select(AuditRecord.payload).where(AuditRecord.action == "emission_factors.synced"))]
    assert payloads[-1]["changes"] == [{"key": "grid.average", "region": "CN", "year": 2023,
                                        "old": "0.5306", "new": "0.5310"}]


def test_operator_adds_a_year_and_calculations_use_it(session):
    factors.sync_shipped(session)
    op = party(session, HolderKind.OPERATOR)
    f = factors.add_factor(session, op.actor, key="grid.average", value="0.4200", unit="kg CO2/kWh",
                           gas_basis="CO2", region="CN-GD", year=2024, source="MEE/NBS 2024 announcement",
                           valid_from="2024-01-01")
    session.commit()
    assert f.origin == "operator"
    calc = calculators.calculate("CI-PV", {"generation_mwh": "2.5", "region": "CN-GD", "year": 2024}, session)
    # 2.5 MWh × 420,000 g/MWh = 1,050,000 g
    assert calc.reduction_g == 1_050_000
    assert (calc.factors[0]["id"], calc.factors[0]["year"], calc.factors[0]["origin"]) == (f.id, 2024, "operator")
    # 2023 activity still uses the shipped 2023 row
    assert calculators.calculate("CI-PV", {"generation_mwh": 1, "region": "CN-GD", "year": 2023},
                                 session).reduction_g == 441_900
    [rec] = session.scalars(select(AuditRecord).where(AuditRecord.action == "emission_factor.added")).all()
    assert rec.entity_id == str(f.id) and rec.actor_holder_id == op.holder.id
    assert json.loads(rec.payload)["value"] == "0.4200"


def test_add_factor_is_for_operators_and_refuses_duplicates(session):
    factors.sync_shipped(session)
    someone = party(session, HolderKind.ENTERPRISE)
    args = dict(key="grid.average", value="0.5", unit="kg CO2/kWh", gas_basis="CO2", region="CN",
                year=2023, source="x")
    with pytest.raises(Forbidden):
        factors.add_factor(session, someone.actor, **args)
    op = party(session, HolderKind.OPERATOR)
    with pytest.raises(Conflict):
        factors.add_factor(session, op.actor, **args)
    with pytest.raises(InvalidInput) as e:
        factors.add_factor(session, op.actor, **(args | {"year": 2030, "value": "1e"}))
    assert e.value.field == "value"


def test_negative_values_are_stored_exactly(session):
    factors.sync_shipped(session)
    session.commit()
    assert resolve(session, "waste.msw.sorted_treatment", "CN-ZJ", 2024).exact == -230
