"""Each calculator pinned to hand-computed cases (the hand computation is in the comment beside it).

Factors are in g per unit: 0.4419 kg/kWh = 441.9 g/kWh. Rounding is once, half away from zero.
"""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from registry import calculators
from registry.calculators import calculate, round_half_up
from registry.errors import InvalidInput, NotFound
from registry.factors import make_row, shipped_table
from registry.methodologies import CALCULATORS


def cited(calc):
    return [(f["key"], f["region"], f["year"]) for f in calc.factors]


def test_every_code_is_registered_with_the_methodologies():
    for code in ("CI-TRANSIT", "CI-BIKE", "CI-NEV", "CI-WASTE", "CI-HOME", "CI-PV", "CI-EE", "CI-HEAT",
                 "CI-FOREST"):
        assert CALCULATORS[code] is calculators.BY_CODE[code]
    with pytest.raises(NotFound):
        calculate("CI-NOPE", {})


def test_round_half_up():
    assert [round_half_up(Fraction(x)) for x in ("0.5", "1.5", "2.5", "2.4999", "-2.5", "-0.4")] == [1, 2, 3, 2, -3, 0]


# -- CI-TRANSIT ---------------------------------------------------------------------------------

def test_transit_metro_shenzhen():
    c = calculate("CI-TRANSIT", {"mode": "metro", "distance_km": "12.5", "region": "CN-GD-SZ", "year": 2024})
    # 12.5 pkm × 46.7 g/pkm = 583.75 g → 584
    assert (c.reduction_g, c.baseline_g, c.project_g, c.leakage_g) == (584, 584, 0, 0)
    assert cited(c) == [("ci.transit.metro", "CN-GD-SZ", 2021)]
    assert "46.7" in c.formula and "583.75" in c.formula


def test_transit_electric_bus_shenzhen():
    c = calculate("CI-TRANSIT", {"mode": "bus", "distance_km": 7.3, "region": "CN-GD-SZ", "date": "2022-06-01"})
    # 7.3 pkm × 26.9 g/pkm = 196.37 g → 196
    assert c.reduction_g == 196
    assert c.inputs == {"mode": "bus", "distance_km": "7.3", "region": "CN-GD-SZ", "year": 2022}


def test_transit_city_defined_by_baseline_and_mode_rows():
    t = shipped_table().with_rows(
        make_row(key="ci.transit.baseline", value="120", unit="g CO2/pkm", gas_basis="CO2", region="CN-BJ",
                 year=2023, source="test: Beijing motorised average", origin="operator"))
    c = calculate("CI-TRANSIT", {"mode": "metro", "distance_km": 10, "region": "CN-BJ", "year": 2024}, t)
    # BE = 10 × 120 = 1,200 g; PE = 10 × 61 g/pkm (Beijing metro 0.061 kg, 2019) = 610 g; ER = 590 g
    assert (c.reduction_g, c.baseline_g, c.project_g) == (590, 1200, 610)
    assert cited(c) == [("ci.transit.baseline", "CN-BJ", 2023), ("transport.metro", "CN-BJ", 2019)]


def test_transit_city_without_factors_is_not_found():
    with pytest.raises(NotFound):
        calculate("CI-TRANSIT", {"mode": "bus", "distance_km": 5, "region": "CN-GD-GZ", "year": 2024})


@pytest.mark.parametrize("activity, field", [
    ({"mode": "taxi", "distance_km": 5, "region": "CN-GD-SZ", "year": 2024}, "mode"),
    ({"distance_km": 5, "region": "CN-GD-SZ", "year": 2024}, "mode"),
    ({"mode": "bus", "distance_km": -1, "region": "CN-GD-SZ", "year": 2024}, "distance_km"),
    ({"mode": "bus", "distance_km": "far", "region": "CN-GD-SZ", "year": 2024}, "distance_km"),
    ({"mode": "bus", "distance_km": True, "region": "CN-GD-SZ", "year": 2024}, "distance_km"),
    ({"mode": "bus", "distance_km": float("nan"), "region": "CN-GD-SZ", "year": 2024}, "distance_km"),
    ({"mode": "bus", "distance_km": 5, "year": 2024}, "region"),
    ({"mode": "bus", "distance_km": 5, "region": "CN-GD-SZ"}, "year"),
    ({"mode": "bus", "distance_km": 5, "region": "CN-GD-SZ", "date": "yesterday"}, "date"),
    ({"mode": "bus", "distance_km": 5, "region": "shenzhen", "year": 2024}, "region"),
])
def test_transit_bad_inputs_name_the_field(activity, field):
    with pytest.raises(InvalidInput) as e:
        calculate("CI-TRANSIT", activity)
    assert e.value.field == field


# -- CI-BIKE ------------------------------------------------------------------------------------

@pytest.mark.parametrize("km, expected", [
    ("0.8", 0),     # < 1 km replaces walking: 0
    ("1", 23),      # 1 × 1/2 × 46.7 = 23.35 → 23
    ("2", 47),      # 2 × 1/2 × 46.7 = 46.7 → 47
    ("5", 234),     # 5 × 1 × 46.7 = 233.5 → 234 (half up)
])
def test_bike_distance_dependent_coefficient(km, expected):
    c = calculate("CI-BIKE", {"distance_km": km, "region": "CN-GD-SZ", "year": 2024})
    assert c.reduction_g == expected and c.project_g == 0
    assert cited(c) == [("ci.bike.baseline", "CN-GD-SZ", 2021)]


def test_bike_short_ride_says_why():
    c = calculate("CI-BIKE", {"distance_km": "0.5", "region": "CN-GD-SZ", "year": 2024})
    assert c.reduction_g == 0 and not c.clamped and "walking" in c.notes[0]


def test_bike_bad_distance():
    with pytest.raises(InvalidInput) as e:
        calculate("CI-BIKE", {"distance_km": 80, "region": "CN-GD-SZ", "year": 2024})
    assert e.value.field == "distance_km"


# -- CI-NEV -------------------------------------------------------------------------------------

def test_nev_guangdong_default_fuel_economy():
    c = calculate("CI-NEV", {"distance_km": 100, "kwh_per_100km": 15, "region": "CN-GD", "year": 2024})
    # BE = 100 km × 8 L/100 km = 8 L × 2,164.574 g/L = 17,316.592 g
    # PE = 100 km × 15 kWh/100 km = 15 kWh × 441.9 g/kWh = 6,628.5 g
    # ER = 10,688.092 g → 10,688; BE → 17,317, PE → 6,629
    assert (c.reduction_g, c.baseline_g, c.project_g) == (10_688, 17_317, 6_629)
    assert cited(c) == [("fuel.gasoline.litre", "CN", 2020), ("grid.average", "CN-GD", 2023)]
    assert c.inputs["fuel_l_per_100km"] == "8"


def test_nev_sichuan_given_fuel_economy():
    c = calculate("CI-NEV", {"distance_km": "200", "kwh_per_100km": "18", "fuel_l_per_100km": "6.5",
                             "region": "CN-SC", "year": 2023})
    # BE = 13 L × 2,164.574 = 28,139.462 g; PE = 36 kWh × 156.4 = 5,630.4 g; ER = 22,509.062 → 22,509
    assert c.reduction_g == 22_509


def test_nev_needs_the_vehicle_consumption():
    with pytest.raises(InvalidInput) as e:
        calculate("CI-NEV", {"distance_km": 100, "region": "CN-GD", "year": 2024})
    assert e.value.field == "kwh_per_100km"


# -- CI-WASTE -----------------------------------------------------------------------------------

def test_waste_by_category_and_weight():
    c = calculate("CI-WASTE", {"region": "CN-GD-SZ", "year": 2025, "items": [
        {"category": "recyclables", "weight_kg": "12.5"},
        {"category": "kitchen", "weight_kg": 3},
        {"category": "sorted_household", "weight_kg": 10},
    ]})
    # recyclables: 12.5 kg × 1,340 g/kg = 16,750 g (BE, PE 0)
    # kitchen: BE 3 × 700.3 = 2,100.9 g; PE 3 × 8.98 = 26.94 g  (UK DESNZ 2025, fallback GB)
    # sorted household: BE 10 × 686 = 6,860 g; PE 10 × (−230) = −2,300 g
    # BE = 25,710.9; PE = −2,273.06; ER = 27,983.96 → 27,984
    assert (c.reduction_g, c.baseline_g, c.project_g) == (27_984, 25_711, -2_273)
    assert cited(c) == [("ci.waste.recyclables", "CN", 2022), ("waste.food.landfill", "GB", 2025),
                        ("waste.food.composting", "GB", 2025), ("waste.msw.mixed_landfill", "CN", 2023),
                        ("waste.msw.sorted_treatment", "CN", 2023)]
    assert c.inputs["items"][1] == {"category": "kitchen", "weight_kg": "3"}


@pytest.mark.parametrize("items, field", [
    ([{"category": "glass", "weight_kg": 1}], "items[0].category"),
    ([{"category": "recyclables", "weight_kg": 1}, {"category": "recyclables", "weight_kg": -2}],
     "items[1].weight_kg"),
    ([{"weight_kg": 1}], "items[0].category"),
    ([], "items"),
    ("recyclables", "items"),
    (["recyclables"], "items[0]"),
])
def test_waste_bad_inputs_name_the_field(items, field):
    with pytest.raises(InvalidInput) as e:
        calculate("CI-WASTE", {"region": "CN", "year": 2024, "items": items})
    assert e.value.field == field


# -- CI-HOME ------------------------------------------------------------------------------------

def home(**kw):
    return calculate("CI-HOME", {"utility": "electricity", "region": "CN-GD", "year": 2024} | kw)


def test_home_below_community_average():
    c = home(actual="7.5", community_average=10)
    # (10 − 7.5) kWh × 441.9 g/kWh = 1,104.75 → 1,105; BE 4,419, PE 3,314.25 → 3,314
    assert (c.reduction_g, c.baseline_g, c.project_g) == (1_105, 4_419, 3_314)
    assert cited(c) == [("grid.average", "CN-GD", 2023)]


def test_home_above_community_uses_own_7_day_average():
    c = home(actual=12, community_average=10, trailing_7day_average=14)
    # (14 − 12) × 441.9 = 883.8 → 884
    assert c.reduction_g == 884 and "7-day" in c.notes[0]


def test_home_above_both_averages_is_clamped_to_zero():
    c = home(actual=12, community_average=10, trailing_7day_average=11)
    # (11 − 12) × 441.9 = −441.9 < 0 → 0, clamped
    assert (c.reduction_g, c.clamped) == (0, True)
    assert "clamped" in c.notes[-1]


def test_home_above_community_without_history_earns_nothing():
    c = home(actual=12, community_average=10)
    assert (c.reduction_g, c.clamped) == (0, False)


def test_home_below_community_is_credited_against_the_community_not_its_own_history():
    c = home(actual=8, community_average=10, trailing_7day_average=20)
    # Shenzhen rule: actual < community → baseline = community: (10 − 8) × 441.9 = 883.8 → 884
    assert c.reduction_g == 884


def test_home_water_counts_supply_and_treatment():
    c = home(utility="water", actual="0.3", community_average="0.8", year=2025)
    # EF = 191.3 + 170.9 = 362.2 g/m3; 0.5 m3 × 362.2 = 181.1 → 181
    assert c.reduction_g == 181
    assert cited(c) == [("water.supply", "GB", 2025), ("water.treatment", "GB", 2025)]


def test_home_gas():
    c = home(utility="gas", actual="0.7", community_average="1.0")
    # 0.3 m3 × 2,162.2 g/m3 = 648.66 → 649
    assert c.reduction_g == 649 and cited(c) == [("fuel.natural_gas", "CN", 2020)]


@pytest.mark.parametrize("kw, field", [
    ({"utility": "heat", "actual": 1, "community_average": 2}, "utility"),
    ({"actual": 1}, "community_average"),
    ({"actual": 1, "community_average": 0}, "community_average"),
    ({"actual": -1, "community_average": 2}, "actual"),
    ({"actual": 1, "community_average": 2, "trailing_7day_average": "x"}, "trailing_7day_average"),
])
def test_home_bad_inputs_name_the_field(kw, field):
    with pytest.raises(InvalidInput) as e:
        home(**kw)
    assert e.value.field == field


# -- enterprise: CI-PV, CI-EE, CI-HEAT ----------------------------------------------------------

def test_pv_uses_the_provincial_factor_of_the_latest_year():
    c = calculate("CI-PV", {"generation_mwh": "120.5", "auxiliary_mwh": "0.5", "region": "CN-GD", "year": 2024})
    # BE = 120.5 MWh × 441,900 g/MWh = 53,248,950 g; PE = 0.5 × 441,900 = 220,950 g; ER = 53,028,000
    assert (c.reduction_g, c.baseline_g, c.project_g) == (53_028_000, 53_248_950, 220_950)
    assert cited(c) == [("grid.average", "CN-GD", 2023)]


def test_pv_national_factor_by_year():
    # 10 MWh × 556,800 g/MWh (CN 2021) = 5,568,000
    assert calculate("CI-PV", {"generation_mwh": 10, "region": "CN-JS", "year": 2021}).reduction_g == 5_568_000


def test_energy_efficiency_electricity_falls_back_to_national():
    c = calculate("CI-EE", {"carrier": "electricity", "baseline_energy": 1_200_000, "baseline_output": 10_000,
                            "project_energy": 950_000, "project_output": 9_500, "region": "CN-HB", "year": 2024})
    # SEC = 120 kWh/unit; BE = 120 × 9,500 = 1,140,000 kWh × 530.6 = 604,884,000 g
    # PE = 950,000 × 530.6 = 504,070,000 g; ER = 100,814,000 g
    assert (c.reduction_g, c.baseline_g, c.project_g) == (100_814_000, 604_884_000, 504_070_000)
    assert cited(c) == [("grid.average", "CN", 2023)]


def test_energy_efficiency_natural_gas():
    c = calculate("CI-EE", {"carrier": "natural_gas", "baseline_energy": 50_000, "baseline_output": 1_000,
                            "project_energy": 40_000, "project_output": 1_100, "region": "CN-ZJ", "year": 2024})
    # BE = 50 m3/t × 1,100 t = 55,000 m3 × 2,162.2 = 118,921,000; PE = 40,000 × 2,162.2 = 86,488,000
    assert c.reduction_g == 32_433_000


def test_energy_efficiency_needs_a_baseline_output():
    with pytest.raises(InvalidInput) as e:
        calculate("CI-EE", {"carrier": "electricity", "baseline_energy": 1, "baseline_output": 0,
                            "project_energy": 1, "project_output": 1, "region": "CN", "year": 2024})
    assert e.value.field == "baseline_output"


def test_waste_heat_to_electricity():
    c = calculate("CI-HEAT", {"displaces": "electricity", "net_generation_mwh": 250, "region": "CN-SC",
                              "year": 2023})
    # 250 MWh × 156,400 g/MWh = 39,100,000
    assert c.reduction_g == 39_100_000 and cited(c) == [("grid.average", "CN-SC", 2023)]


def test_waste_heat_displacing_a_gas_boiler():
    c = calculate("CI-HEAT", {"displaces": "natural_gas", "heat_mwh": 100, "boiler_efficiency": "0.9",
                              "region": "CN-GD", "year": 2024})
    # gas = 100 × 3,600 MJ ÷ (38.931 MJ/m3 × 0.9) = 360,000 ÷ 35.0379 = 10,274.588 m3
    # BE = 360,000 × 2,162.2 ÷ 35.0379 = 778,392,000 ÷ 35.0379 = 22,215,714.98 g → 22,215,715
    assert c.reduction_g == 22_215_715
    assert cited(c) == [("fuel.natural_gas", "CN", 2020)]


@pytest.mark.parametrize("eta", [0, "1.2"])
def test_waste_heat_boiler_efficiency_is_checked(eta):
    with pytest.raises(InvalidInput) as e:
        calculate("CI-HEAT", {"displaces": "natural_gas", "heat_mwh": 1, "boiler_efficiency": eta,
                              "region": "CN", "year": 2024})
    assert e.value.field == "boiler_efficiency"


# -- CI-FOREST ----------------------------------------------------------------------------------

def test_forest_with_default_buffer():
    c = calculate("CI-FOREST", {"delta_c_tc": 100, "baseline_delta_c_tc": 10, "leakage_tco2e": 5, "year": 2024})
    # (100 − 10) t C × 44/12 = 330 t CO2; − 5 t leakage = 325 t = 325,000,000 g
    # buffer 20 % = 65,000,000 g withheld; issuable 260,000,000 g
    # BE = −10 × 44/12 t = −36,666,666.67 g → −36,666,667; PE = −366,666,666.67 g → −366,666,667
    assert (c.reduction_g, c.withheld_g, c.issuable_g) == (325_000_000, 65_000_000, 260_000_000)
    assert (c.baseline_g, c.project_g, c.leakage_g) == (-36_666_667, -366_666_667, 5_000_000)


def test_forest_buffer_share_is_a_parameter_and_rounds_once():
    c = calculate("CI-FOREST", {"delta_c_tc": "0.001", "buffer_share": "0.25", "year": 2024})
    # 0.001 t C × 44/12 = 0.0036667 t = 3,666.67 g → 3,667; buffer 3,666.67 × 0.25 = 916.67 → 917
    assert (c.reduction_g, c.withheld_g, c.issuable_g) == (3_667, 917, 2_750)


def test_forest_leakage_above_removals_is_clamped():
    c = calculate("CI-FOREST", {"delta_c_tc": 1, "leakage_tco2e": 10, "year": 2024})
    # 3.6667 t − 10 t < 0 → 0, and no buffer
    assert (c.reduction_g, c.withheld_g, c.clamped) == (0, 0, True)


def test_forest_buffer_share_above_one_is_refused():
    with pytest.raises(InvalidInput) as e:
        calculate("CI-FOREST", {"delta_c_tc": 1, "buffer_share": 2, "year": 2024})
    assert e.value.field == "buffer_share"


# -- every calculation --------------------------------------------------------------------------

EXAMPLES = {
    "CI-TRANSIT": {"mode": "metro", "distance_km": 3, "region": "CN-GD-SZ", "year": 2024},
    "CI-BIKE": {"distance_km": 3, "region": "CN-GD-SZ", "year": 2024},
    "CI-NEV": {"distance_km": 30, "kwh_per_100km": 14, "region": "CN-ZJ", "year": 2024},
    "CI-WASTE": {"region": "CN", "year": 2024, "items": [{"category": "recyclables", "weight_kg": 2}]},
    "CI-HOME": {"utility": "electricity", "actual": 5, "community_average": 6, "region": "CN-SH", "year": 2024},
    "CI-PV": {"generation_mwh": 1, "region": "CN-BJ", "year": 2024},
    "CI-EE": {"carrier": "lpg", "baseline_energy": 10, "baseline_output": 1, "project_energy": 8,
              "project_output": 1, "region": "CN", "year": 2024},
    "CI-HEAT": {"displaces": "electricity", "net_generation_mwh": 1, "region": "CN-SH", "year": 2024},
}


@pytest.mark.parametrize("code", sorted(EXAMPLES))
def test_every_calculation_cites_its_rows_with_year_and_is_exact(code):
    c = calculate(code, EXAMPLES[code])
    assert c.factors, code
    for f in c.factors:
        assert set(f) >= {"id", "key", "region", "year", "value", "unit", "source"}
        assert isinstance(f["year"], int) and f["source"]
    for v in (c.reduction_g, c.baseline_g, c.project_g, c.leakage_g, c.withheld_g):
        assert type(v) is int
    assert c.reduction_g > 0 and "ER = BE − PE − LE" in c.formula
    json.dumps(c.as_dict(), ensure_ascii=False)


def test_calculators_take_the_table_from_the_caller():
    t = shipped_table().with_rows(
        make_row(key="grid.average", value="0.1", unit="kg CO2/kWh", gas_basis="CO2", region="CN-SH",
                 year=2024, source="test", origin="operator"))
    # 1 MWh × 100,000 g/MWh
    assert calculate("CI-PV", EXAMPLES["CI-PV"] | {"region": "CN-SH"}, t).reduction_g == 100_000
    assert calculate("CI-PV", EXAMPLES["CI-PV"] | {"region": "CN-SH"}).reduction_g == 573_700
