"""Footprints: the worked conference case by hand, the other calculators, rounding and bad inputs."""

from __future__ import annotations

from fractions import Fraction

import pytest

from exchange import footprints
from exchange.footprints import calculate
from registry import factors, holders
from registry.errors import InvalidInput
from registry.factors import make_row, shipped_table
from registry.models import HolderKind, User
from tests.factories import party

CONFERENCE = {
    "name": "大湾区低碳论坛 2026", "region": "CN-GD", "year": 2026,
    "venue": {"electricity_kwh": 6000},
    "attendee_travel": [
        # "2,000 km return": 2,000 km each way, there and back.
        {"mode": "flight_domestic", "people": 120, "distance_km": 2000, "round_trip": True},
        {"mode": "hsr", "people": 80, "distance_km": 1000, "round_trip": True},
        # 30 km a day by metro, on both days.
        {"mode": "metro", "people": 100, "distance_km": 30, "days": 2},
    ],
    "hotel_room_nights": 400,
    "meals": [{"type": "medium_meat", "count": 1200}],
}


def test_worked_conference_by_hand() -> None:
    b = calculate("event", CONFERENCE)
    by_key = {ln["factor"]["key"]: ln for ln in b.lines}
    # flights: 120 × 2,000 km × 2 = 480,000 pkm × 0.0953 kg/pkm (China domestic, 2019) = 45,744 kg
    assert by_key["transport.flight.domestic.no_rf"]["kg"] == "45744"
    assert by_key["transport.flight.domestic.no_rf"]["factor"]["region"] == "CN"
    # high-speed rail: 80 × 1,000 km × 2 = 160,000 pkm × 0.03048 = 4,876.8 kg
    assert by_key["transport.rail.hsr"]["kg"] == "4876.8"
    # metro: 100 × 30 km × 2 days = 6,000 pkm × 0.0278 (no Guangdong factor: UK DESNZ 2025) = 166.8 kg
    assert by_key["transport.metro"]["kg"] == "166.8"
    assert (by_key["transport.metro"]["factor"]["region"], by_key["transport.metro"]["factor"]["year"]) == ("GB", 2025)
    # hotel: 400 room-nights × 53.5 kg (China, DESNZ 2025) = 21,400 kg
    assert by_key["hotel.room_night"]["kg"] == "21400"
    # meals: 1,200 × 1.88 kg (medium meat) = 2,256 kg
    assert by_key["meal.medium_meat"]["kg"] == "2256"
    # electricity: 6,000 kWh × 0.4419 kg/kWh (Guangdong provincial grid, 2023) = 2,651.4 kg
    grid = by_key["grid.average"]
    assert grid["kg"] == "2651.4" and grid["factor"]["region"] == "CN-GD" and grid["factor"]["year"] == 2023
    assert "MEE/NBS" in grid["factor"]["source"]
    # 45,744 + 4,876.8 + 166.8 + 21,400 + 2,256 + 2,651.4 = 77,095 kg
    assert b.exact_kg == "77095" and b.total_kg == 77_095
    assert sum(ln["g"] for ln in b.lines) == 77_095_000
    assert {ln["scope"] for ln in b.lines} == {"venue_energy", "attendee_travel", "accommodation", "catering"}


def test_total_is_rounded_up_to_whole_kg() -> None:
    # 1 kWh × 0.4419 = 0.4419 kg → 1 kg; 3 kWh = 1.3257 kg → 2 kg.
    assert calculate("event", {"name": "x", "region": "CN-GD", "venue": {"electricity_kwh": 1}}).total_kg == 1
    b = calculate("event", {"name": "x", "region": "CN-GD", "venue": {"electricity_kwh": 3}})
    assert (b.exact_kg, b.total_kg, b.lines[0]["g"]) == ("1.3257", 2, 1326)


def test_event_materials_waste_fuels_and_heat() -> None:
    b = calculate("event", {"name": "x", "region": "CN-SC", "year": 2026,
                            "venue": {"heat_gj": 10, "fuels": [{"fuel": "natural_gas", "quantity": 100}]},
                            "staff_travel": [{"mode": "car", "people": 4, "distance_km": 50, "occupancy": 2}],
                            "materials": [{"material": "paper", "kg": 200}],
                            "waste": [{"stream": "residual_landfill", "kg": 500}]})
    kg = {ln["factor"]["key"]: ln["kg"] for ln in b.lines}
    assert kg == {
        "heat.purchased": "1100",            # 10 GJ × 0.11 t/GJ
        "fuel.natural_gas": "216.22",        # 100 m3 × 2.1622 kg/m3
        "transport.car.petrol": "17.3",      # 4 people × 50 km ÷ 2 per car = 100 vkm × 0.173 (China)
        "material.paper": "269",             # 0.2 t × 1,345 kg/t
        "waste.residual.landfill": "248.6",  # 0.5 t × 497.2 kg/t
    }
    assert (b.exact_kg, b.total_kg) == ("1851.12", 1852)   # 1,100 + 216.22 + 17.3 + 269 + 248.6, rounded up


def test_organisation_and_personal() -> None:
    org = calculate("organisation", {
        "name": "成都云计算公司 2025", "region": "CN-SC", "year": 2025,
        "fuels": [{"fuel": "diesel", "quantity": 1000}], "electricity_kwh": 100_000,
        "business_travel": [{"mode": "flight_domestic", "distance_km": 1500, "people": 10, "round_trip": True}],
        "commuting": [{"mode": "metro", "people": 50, "distance_km": 20, "days": 250}]})
    kg = {ln["scope"]: ln["kg"] for ln in org.lines}
    assert kg == {"scope1_fuels": "2631.515",     # 1,000 L × 2.631515
                  "scope2_energy": "15640",       # 100,000 kWh × 0.1564 (Sichuan)
                  "business_travel": "2859",      # 30,000 pkm × 0.0953
                  "commuting": "6950"}            # 250,000 pkm × 0.0278
    assert org.total_kg == 28_081                 # 28,080.515 rounded up

    me = calculate("personal", {
        "name": "李明 2025", "region": "CN-GD", "year": 2025, "electricity_kwh": 2000, "gas_m3": 100,
        "water_m3": 50, "car": [{"mode": "car", "distance_km": 5000}],
        "flights": [{"mode": "flight_domestic", "distance_km": 1000, "round_trip": True}],
        "diet": {"type": "vegetarian", "days": 10}})
    parts = [(ln["scope"], ln["kg"]) for ln in me.lines]
    assert parts == [("home_energy", "883.8"), ("home_energy", "216.22"), ("water", "9.565"),
                     ("water", "8.545"), ("car", "865"), ("flights", "190.6"), ("diet", "38.1")]
    assert me.exact_kg == "2211.83" and me.total_kg == 2212


@pytest.mark.parametrize("inputs, field", [
    ({"name": "x", "region": "CN-GD", "attendee_travel": [{"mode": "rocket", "distance_km": 5}]},
     "attendee_travel.0.mode"),
    ({"name": "x", "region": "CN-GD", "attendee_travel": [{"mode": "hsr", "distance_km": -5}]},
     "attendee_travel.0.distance_km"),
    ({"name": "x", "region": "CN-GD", "attendee_travel": [{"mode": "hsr"}]}, "attendee_travel.0.distance_km"),
    ({"name": "x", "venue": {"electricity_kwh": 5}}, "region"),
    ({"region": "CN-GD", "venue": {"electricity_kwh": 5}}, "name"),
    ({"name": "x", "region": "CN-GD", "meals": [{"type": "banquet", "count": 3}]}, "meals.0.type"),
    ({"name": "x", "region": "CN-GD", "hotel_nights": 3}, "hotel_nights"),
    ({"name": "x", "region": "CN-GD"}, "attendee_travel"),
    ({"name": "x", "region": "CN-GD", "attendee_travel": [{"mode": "hsr", "distance_km": 5, "round_trip": "y"}]},
     "attendee_travel.0.round_trip"),
])
def test_bad_inputs_name_the_field(inputs, field) -> None:
    with pytest.raises(InvalidInput) as e:
        calculate("event", inputs)
    assert e.value.field == field


def test_operator_added_year_is_used() -> None:
    table = shipped_table().with_rows(make_row(key="grid.average", value="0.4000", unit="kg CO2/kWh",
                                               gas_basis="CO2", region="CN-GD", year=2025, source="test"))
    b = calculate("event", {"name": "x", "region": "CN-GD", "year": 2026, "venue": {"electricity_kwh": 10}}, table)
    assert b.lines[0]["factor"]["year"] == 2025 and b.total_kg == 4
    assert Fraction(b.exact_kg) == 4


def _token(session, p) -> str:
    return holders.create_token(session, session.get(User, p.actor.user_id))[1]


def test_footprint_api(client, session) -> None:
    factors.sync_shipped(session)
    org = party(session, HolderKind.EVENT_ORGANISER)
    other = party(session, HolderKind.INDIVIDUAL)
    tok, other_tok = _token(session, org), _token(session, other)
    session.commit()
    h = {"Authorization": f"Bearer {tok}"}
    r = client.post("/api/v1/footprints", headers=h, json={"kind": "event", "inputs": CONFERENCE,
                                                           "reductions": ["LED lighting"]})
    assert r.status_code == 201, r.json
    assert r.json["total_kg"] == 77_095 and len(r.json["lines"]) == 6 and r.json["reductions"] == ["LED lighting"]
    assert r.json["lines"][0]["factor"]["id"] is not None        # the database row is cited
    fid = r.json["id"]
    got = client.get(f"/api/v1/footprints/{fid}", headers=h)
    assert got.status_code == 200 and got.json["inputs"]["hotel_room_nights"] == 400
    assert client.get(f"/api/v1/footprints/{fid}", headers={"Authorization": f"Bearer {other_tok}"}).status_code == 404
    assert client.get(f"/api/v1/footprints/{fid}").status_code == 401
    assert [f["id"] for f in client.get("/api/v1/footprints", headers=h).json] == [fid]

    bad = client.post("/api/v1/footprints", headers=h, json={"kind": "event", "inputs": {
        "name": "x", "region": "CN-GD", "attendee_travel": [{"mode": "hsr", "distance_km": -1}]}})
    assert bad.status_code == 422 and bad.json["error"]["field"] == "inputs.attendee_travel.0.distance_km"
    bad = client.post("/api/v1/footprints", headers=h, json={"kind": "party", "inputs": {}})
    assert bad.status_code == 422 and bad.json["error"]["field"] == "kind"
    bad = client.post("/api/v1/footprints", headers=h, json={"kind": "event"})
    assert bad.status_code == 422 and bad.json["error"]["field"] == "inputs"
    assert len(footprints.footprints_of(session, org.holder.id)) == 1     # nothing else was stored
