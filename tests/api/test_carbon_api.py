"""Emission factors and calculators over HTTP."""

from __future__ import annotations

from registry import factors, holders
from registry.models import HolderKind, User
from tests.factories import party


def test_factors_listing_calculation_and_new_year(client, session):
    factors.sync_shipped(session)
    op = party(session, HolderKind.OPERATOR)
    token = holders.create_token(session, session.get(User, op.actor.user_id))[1]
    session.commit()
    grid = client.get("/api/v1/emission-factors?key=grid.average&region=CN").json
    assert {(f["year"], f["value"]) for f in grid["items"]} >= {(2021, "0.5568"), (2022, "0.5366"), (2023, "0.5306")}

    r = client.post("/api/v1/methodologies/CI-TRANSIT/calculate", json={
        "activity": {"mode": "metro", "distance_km": 10, "region": "CN-GD-SZ", "year": 2025}})
    assert r.status_code == 200, r.json
    assert r.json["reduction_g"] == 467            # 10 pkm × 46.7 g/pkm (Shenzhen metro)
    assert r.json["factors"][0]["key"] == "ci.transit.metro" and r.json["factors"][0]["year"] == 2021

    bad = client.post("/api/v1/methodologies/CI-TRANSIT/calculate", json={
        "activity": {"mode": "rocket", "distance_km": 10, "region": "CN-GD-SZ", "year": 2025}})
    assert bad.status_code == 422 and bad.json["error"]["field"] == "activity.mode"
    neg = client.post("/api/v1/methodologies/CI-TRANSIT/calculate", json={
        "activity": {"mode": "bus", "distance_km": -3, "region": "CN-GD-SZ", "year": 2025}})
    assert neg.status_code == 422 and neg.json["error"]["field"] == "activity.distance_km"
    assert client.post("/api/v1/methodologies/NOPE/calculate", json={"activity": {}}).status_code == 404

    # PV in Guangdong uses the 2023 provincial factor; an operator adds 2025 and it is used at once.
    pv = {"activity": {"generation_mwh": 100, "region": "CN-GD", "year": 2025}}
    before = client.post("/api/v1/methodologies/CI-PV/calculate", json=pv)
    assert before.status_code == 200, before.json
    assert before.json["reduction_g"] == 44_190_000 and before.json["factors"][0]["year"] == 2023
    r = client.post("/api/v1/emission-factors", headers={"Authorization": f"Bearer {token}"}, json={
        "key": "grid.average", "value": "0.4000", "unit": "kg CO2/kWh", "gas_basis": "CO2", "region": "CN-GD",
        "year": 2025, "source": "test: a future MEE notice"})
    assert r.status_code == 201, r.json
    after = client.post("/api/v1/methodologies/CI-PV/calculate", json=pv).json
    assert after["reduction_g"] == 40_000_000 and after["factors"][0]["year"] == 2025
