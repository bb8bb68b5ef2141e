"""Badges (awarded once, with the time) and the annual leaderboards (ties ranked alike, listed by
user id), in the domain and over HTTP.

Grams by hand (Shenzhen factors): metro 10 km × 46.7 g/pkm = 467 g; recyclables 8 kg × 1.34 kg/kg =
10,720 g; points 1 per 10 g with the member's carry: 467 → 46, then 11,187 → 1,118."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from registry import behaviour, recognition
from registry.errors import InvalidInput
from registry.recognition import UserBadge
from tests.behaviour.test_behaviour_api import bearer
from tests.behaviour.world import RECEIVED, T0, BWorld, build, row

H = dt.timedelta(hours=1)


def feed(session: Session, factory: sessionmaker[Session], bw: BWorld) -> None:
    """Residents 0-3 (communities 社区0, 社区1, 社区0, 社区1 of 南山区, 深圳市)."""
    session.rollback()
    behaviour.import_rows(factory, "sz-metro", "m1", "api", [
        row("m0", "card-0", "CI-TRANSIT", T0, mode="metro", distance_km="10"),
        row("m2", "card-2", "CI-TRANSIT", T0 + H, mode="metro", distance_km="10"),
        row("m3", "card-3", "CI-TRANSIT", T0 + 2 * H, mode="metro", distance_km="10"),
    ], received_at=RECEIVED)
    behaviour.import_rows(factory, "sz-sort", "s1", "api", [
        row("s0", None, "CI-WASTE", T0 + 3 * H, minutes=5, category="recyclables", weight_kg="8",
            user_id=bw.uid(0)),
        row("s1", None, "CI-WASTE", T0 + 4 * H, minutes=5, category="recyclables", weight_kg="8",
            user_id=bw.uid(1)),
    ], received_at=RECEIVED)
    # resident 3 also rode in 2025: another year's board
    behaviour.import_rows(factory, "sz-metro", "m2025", "api", [
        row("old", "card-3", "CI-TRANSIT", dt.datetime(2025, 6, 1, 1), mode="metro", distance_km="10"),
    ], received_at=dt.datetime(2025, 6, 2))


def test_badges_are_awarded_once_with_the_time(session: Session, session_factory: sessionmaker[Session]) -> None:
    bw = build(session, residents=4)
    feed(session, session_factory, bw)
    at = dt.datetime(2026, 11, 23, 3, 0)
    new = recognition.refresh(session, now=at)
    u = bw.uid
    assert new == sorted([
        (u(0), "first_ride"), (u(0), "first_sorting"), (u(0), "points_1000"), (u(0), "saved_10kg"),
        (u(1), "first_sorting"), (u(1), "points_1000"), (u(1), "saved_10kg"),
        (u(2), "first_ride"), (u(3), "first_ride")])
    session.commit()
    assert recognition.refresh(session, now=at + H) == []             # every batch taken in once
    assert recognition.award_badges(session, [u(i) for i in range(4)], now=at + H) == []   # nothing twice
    session.commit()
    assert session.scalar(select(func.count()).select_from(UserBadge)) == 9
    mine = {b["code"]: b for b in recognition.badges_of(session, u(3))}
    # the first ride is the 2025 one; awarded when the job ran
    assert mine["first_ride"]["achieved_at"] == "2025-06-01T01:00:00Z"
    assert mine["first_ride"]["awarded_at"] == "2026-11-23T03:00:00Z"
    assert {b["code"] for b in recognition.badges_of(session, u(0))} == {
        "first_ride", "first_sorting", "points_1000", "saved_10kg"}
    # a later batch: only its users are looked at, and only its grams are added
    session.rollback()
    behaviour.import_rows(session_factory, "sz-bike", "later", "api", [
        row("k1", "bike-1", "CI-BIKE", T0 + 5 * H, minutes=15, distance_km="4")], received_at=RECEIVED)
    assert recognition.refresh(session, now=at + 2 * H) == [(u(1), "first_ride")]
    session.commit()
    assert recognition.check(session) == []
    session.rollback()


def test_annual_leaderboards_by_city_district_and_community(session: Session,
                                                           session_factory: sessionmaker[Session]) -> None:
    bw = build(session, residents=4)
    feed(session, session_factory, bw)
    assert recognition.leaderboard(session, 2026, city="深圳市")["entries"] == []   # not yet taken in
    recognition.refresh(session)
    u = bw.uid
    city = recognition.leaderboard(session, 2026, city="深圳市")
    assert [(e["rank"], e["user_id"], e["reduction_g"]) for e in city["entries"]] == [
        (1, u(0), 11_187), (2, u(1), 10_720), (3, u(2), 467), (3, u(3), 467)]
    assert city["scope"] == "city" and city["entries"][0]["name"].startswith("U*")
    assert set(city["entries"][0]["name"][1:]) == {"*"}
    assert (recognition.mask_name("李明"), recognition.mask_name("王"), recognition.mask_name("")) == ("李*", "王*", "*")
    community = recognition.leaderboard(session, 2026, city="深圳市", district="南山区", community="社区1")
    assert [(e["rank"], e["user_id"]) for e in community["entries"]] == [(1, u(1)), (2, u(3))]
    assert [(e["user_id"], e["reduction_g"]) for e in recognition.leaderboard(session, 2025)["entries"]] == [
        (u(3), 467)]
    assert recognition.leaderboard(session, 2026, city="广州市")["entries"] == []
    with pytest.raises(InvalidInput) as e:
        recognition.leaderboard(session, 2026, district="南山区")
    assert e.value.field == "city"
    session.rollback()


def test_badges_and_boards_over_http(client: Any, session: Session, session_factory: sessionmaker[Session]) -> None:
    bw = build(session, residents=4)
    feed(session, session_factory, bw)
    recognition.refresh(session)
    session.commit()
    me = bearer(session, bw.uid(2))
    board = client.get("/api/v1/leaderboards?year=2026&city=深圳市&district=南山区", headers=me).json
    assert [(e["rank"], e["reduction_g"], e["me"]) for e in board["entries"]] == [
        (1, 11_187, False), (2, 10_720, False), (3, 467, True), (3, 467, False)]
    assert "user_id" not in board["entries"][0]
    assert client.get("/api/v1/leaderboards?city=深圳市").json["error"]["field"] == "year"
    no_city = client.get("/api/v1/leaderboards?year=2026&district=南山区")
    assert (no_city.status_code, no_city.json["error"]["field"]) == (422, "city")
    assert [b["code"] for b in client.get("/api/v1/me/badges", headers=me).json["badges"]] == ["first_ride"]
    assert client.get("/api/v1/me/badges").status_code == 401
    assert len(client.get("/api/v1/badges").json) == len(recognition.BADGES)
