"""Demo carbon inclusion (碳普惠): partners, members, imported behaviour, points, the rewards mall, the
pool, badges and a closed programme period, made through the use cases.

The behaviour is dated relative to `now` (the claim window is 30 days): residents ride the metro to
work on weekdays of the last 29 China days, ride shared bikes for the last kilometres and bring their
sorted waste to a station. The metro operator's CSV batch has realistic faults, each rejected with
its reason. Closing the previous month turns its accepted grams into a monitoring report, which is
verified and issued; on the 30th and 31st of a month no ride of the window falls in the previous
month, and that period closes with 0 kg and no report.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from exchange import rewards_pool
from registry import (
    behaviour,
    holders,
    issuance,
    partners,
    points,
    programme_periods,
    projects,
    recognition,
    rewards,
)
from registry.actors import Actor
from registry.behaviour_io import csv_rows
from registry.behaviour_rules import Rules
from registry.models import HolderKind, Methodology, Project, User

CHINA = dt.timezone(dt.timedelta(hours=8))
TRANSIT_PROGRAMME = "深圳市民公共交通低碳出行计划"
WASTE_PROGRAMME = "深圳市生活垃圾分类回收碳普惠计划"
CSV_HEADER = ["event_id", "user", "user_id", "type", "started_at", "ended_at", "mode", "distance_km", "category",
              "weight_kg"]


@dataclass(frozen=True)
class Resident:
    name: str
    email: str
    district: str
    community: str
    card: str              # 深圳通 card: the metro operator's id of the member
    metro_km: str          # one way, home to work
    bike_km: str | None    # the last kilometres by shared bike, if any
    sorting: bool          # brings sorted waste to the Shekou station


RESIDENTS = (
    Resident("李明", "liming@example.demo", "南山区", "粤海街道科技园社区", "SZT-29018812", "15.2", "2.4", True),
    Resident("王芳", "wangfang@example.demo", "南山区", "粤海街道科技园社区", "SZT-29027745", "8.4", None, True),
    Resident("陈伟", "chenwei@example.demo", "南山区", "招商街道蛇口社区", "SZT-29033106", "21.5", "4.8", True),
    Resident("刘洋", "liuyang@example.demo", "福田区", "莲花街道莲花北社区", "SZT-29041290", "12.6", "0.8", False),
    Resident("赵敏", "zhaomin@example.demo", "福田区", "莲花街道莲花北社区", "SZT-29056631", "6.3", None, False),
    Resident("黄磊", "huanglei@example.demo", "龙岗区", "坂田街道坂田社区", "SZT-29062284", "24.9", "3.1", False),
    Resident("周婷", "zhouting@example.demo", "罗湖区", "东门街道翠竹社区", "SZT-29070937", "10.7", None, True),
)
UNKNOWN_CARD = "SZT-29019999"   # a card no member has linked


def seeded(session: Session) -> bool:
    return session.scalar(select(partners.Partner.id).where(partners.Partner.code == "sz-metro")) is not None


def _actor(session: Session, email: str) -> Actor:
    user = session.scalar(select(User).where(User.email == email))
    assert user is not None
    return Actor.of(user)


def _programme_id(session: Session, title: str) -> int:
    pid = session.scalar(select(Project.id).where(Project.title == title))
    assert pid is not None
    return pid


def _at(day: dt.date, hh: int, mm: int) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hh, tzinfo=CHINA) + dt.timedelta(minutes=mm)


def _trip_minutes(km: str) -> int:
    return 6 + int(float(km) * 2)      # ~30 km/h door to door on the metro, plus the wait


def metro_rows(today: dt.date) -> list[dict[str, str]]:
    """The metro operator's export: weekday commutes of the last 29 days, Saturday check-ins in its
    app, and the faults of a real feed (each rejected with its reason by the import)."""
    rows: list[dict[str, str]] = []

    def trip(eid: str, card: str, start: dt.datetime, km: str, minutes: int | None = None) -> dict[str, str]:
        end = start + dt.timedelta(minutes=minutes if minutes is not None else _trip_minutes(km or "0"))
        return {"event_id": eid, "user": card, "type": "CI-TRANSIT", "started_at": start.isoformat(),
                "ended_at": end.isoformat(), "mode": "metro", "distance_km": km}

    for back in range(29, 0, -1):
        day = today - dt.timedelta(days=back)
        stamp = day.strftime("%Y%m%d")
        for i, r in enumerate(RESIDENTS):
            if day.weekday() < 5:
                rows.append(trip(f"M{stamp}-{r.card[-4:]}-1", r.card, _at(day, 8, 5 + 6 * i), r.metro_km))
                rows.append(trip(f"M{stamp}-{r.card[-4:]}-2", r.card, _at(day, 18, 10 + 5 * i), r.metro_km))
            elif day.weekday() == 5 and i % 2 == 0:
                t = _at(day, 10, 30 + i)
                rows.append({"event_id": f"C{stamp}-{r.card[-4:]}", "user": r.card, "type": "ENG-CHECKIN",
                             "started_at": t.isoformat(), "ended_at": t.isoformat()})
    late = today - dt.timedelta(days=41)
    weekday = today - dt.timedelta(days=next(d for d in range(2, 9) if (today - dt.timedelta(days=d)).weekday() < 5))
    saturday = today - dt.timedelta(days=next(d for d in range(1, 8) if (today - dt.timedelta(days=d)).weekday() == 5))
    stamp = weekday.strftime("%Y%m%d")
    rows += [
        # a card nobody linked to a member
        trip(f"M{stamp}-9999-1", UNKNOWN_CARD, _at(weekday, 7, 50), "9.8"),
        # a gate fault: 25 km in 6 minutes
        trip(f"M{stamp}-{RESIDENTS[3].card[-4:]}-3", RESIDENTS[3].card, _at(weekday, 13, 0), "25.0", minutes=6),
        # a trip without its distance (the exit gate did not record one)
        trip(f"M{stamp}-{RESIDENTS[2].card[-4:]}-3", RESIDENTS[2].card, _at(weekday, 12, 15), ""),
        # a trip six weeks old, exported late: outside the 30-day claim window
        trip(f"M{late:%Y%m%d}-{RESIDENTS[1].card[-4:]}-1", RESIDENTS[1].card, _at(late, 8, 11), "8.4"),
        # a second check-in the same day (one a day counts)
        {"event_id": f"C{saturday:%Y%m%d}-{RESIDENTS[0].card[-4:]}-b", "user": RESIDENTS[0].card,
         "type": "ENG-CHECKIN", "started_at": _at(saturday, 19, 2).isoformat(),
         "ended_at": _at(saturday, 19, 2).isoformat()},
    ]
    rows.append(dict(rows[0]))   # the export resent its first row: a duplicate event id
    return rows


def bike_rows(today: dt.date) -> list[dict[str, Any]]:
    """Shared-bike rides from the metro station to work on the last ten weekdays."""
    rows: list[dict[str, Any]] = []
    for back in range(10, 0, -1):
        day = today - dt.timedelta(days=back)
        if day.weekday() >= 5:
            continue
        for i, r in enumerate(RESIDENTS):
            if r.bike_km is None:
                continue
            start = _at(day, 8, 5 + 6 * i) + dt.timedelta(minutes=_trip_minutes(r.metro_km) + 3)
            rows.append({"event_id": f"B{day:%Y%m%d}{i:02d}", "user": f"bike-{r.card[-4:]}", "type": "CI-BIKE",
                         "started_at": start.isoformat(),
                         "ended_at": (start + dt.timedelta(minutes=4 + int(float(r.bike_km) * 4))).isoformat(),
                         "distance_km": r.bike_km})
    return rows


def sorting_rows(today: dt.date) -> list[dict[str, Any]]:
    """Weekly drop-offs at the sorting station (kitchen waste, recyclables), quizzes at its kiosk,
    and one implausible weighing."""
    rows: list[dict[str, Any]] = []
    for back in range(28, 0, -1):
        day = today - dt.timedelta(days=back)
        if day.weekday() != 6:
            continue
        for i, r in enumerate(RESIDENTS):
            if not r.sorting:
                continue
            t = _at(day, 9, 10 * i)
            for n, (category, kg) in enumerate((("kitchen", "2.6"), ("recyclables", "3.4"))):
                rows.append({"event_id": f"S{day:%Y%m%d}{i:02d}{n}", "user": f"sort-{r.card[-4:]}",
                             "type": "CI-WASTE", "started_at": (t + dt.timedelta(minutes=n)).isoformat(),
                             "category": category, "weight_kg": kg})
            rows.append({"event_id": f"Q{day:%Y%m%d}{i:02d}", "user": f"sort-{r.card[-4:]}", "type": "ENG-QUIZ",
                         "started_at": (t + dt.timedelta(minutes=5)).isoformat()})
    if rows:
        bad = dict(rows[0], event_id=rows[0]["event_id"] + "x", weight_kg="80")   # the scale misread
        rows.append(bad)
    return rows


def _import_metro(factory: sessionmaker[Session], rows: list[dict[str, str]], ref: str, now: dt.datetime,
                  rules: Rules) -> behaviour.BatchResult:
    """The metro operator's CSV, as `flask registry import-behaviour` reads it (streamed)."""
    fd, path = tempfile.mkstemp(prefix="sz-metro-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_HEADER)
            w.writeheader()
            w.writerows(rows)
        with open(path, "rb") as fp:
            return behaviour.import_rows(factory, "sz-metro", ref, "csv", csv_rows(fp), rules=rules,
                                         received_at=now)
    finally:
        os.unlink(path)


def _people(session: Session, op: Actor, transit_id: int, waste_id: int) -> None:
    """Partners, the residents (Li Ming exists already) and their enrolment, with a welcome bonus."""
    from web.demo import DEMO_PASSWORD

    for code, name, kind, programme, types in (
            ("sz-metro", "深圳市地铁集团有限公司 / Shenzhen Metro", "transit", transit_id,
             ["CI-TRANSIT", "ENG-CHECKIN"]),
            ("sz-bike", "深圳绿骑共享单车有限公司 / Lvqi bike share Shenzhen", "bike_share", transit_id, ["CI-BIKE"]),
            ("sk-sorting", "蛇口再生资源分拣站 / Shekou sorting and recycling station", "sorting_station", waste_id,
             ["CI-WASTE", "ENG-QUIZ"])):
        partners.register_partner(session, op, code=code, name=name, kind=kind, programme_id=programme,
                                  region="CN-GD-SZ", behaviour_types=types)
    for r in RESIDENTS:
        user_id = session.scalar(select(User.id).where(User.email == r.email))
        if user_id is None:
            h = holders.create_holder(session, None, kind=HolderKind.INDIVIDUAL, name=r.name, city="深圳市",
                                      province="广东省")
            user_id = holders.create_user(session, holder_id=h.id, email=r.email, name=r.name, role="admin",
                                          password=DEMO_PASSWORD).id
        ids = {"sz-metro": r.card}
        if r.bike_km is not None:
            ids["sz-bike"] = f"bike-{r.card[-4:]}"
        partners.enrol_member(session, op, programme_id=transit_id, user_id=user_id, city="深圳市",
                              district=r.district, community=r.community, external_ids=ids)
        if r.sorting:
            partners.enrol_member(session, op, programme_id=waste_id, user_id=user_id, city="深圳市",
                                  district=r.district, community=r.community,
                                  external_ids={"sk-sorting": f"sort-{r.card[-4:]}"})
        points.adjust_points(session, op, user_id, 100, "新会员注册奖励 / welcome bonus")


def _waste_programme(session: Session, op: Actor) -> int:
    agency, verifier = _actor(session, "programme@sz-carbon.demo"), _actor(session, "verifier@lvyuan.demo")
    method = session.scalar(select(Methodology.id).where(Methodology.code == "CI-WASTE"))
    assert method is not None
    p = projects.create_project(session, agency, kind="programme", title=WASTE_PROGRAMME,
                                title_en="Shenzhen household waste sorting and recycling programme",
                                methodology_id=method, province="广东省", city="深圳市",
                                estimated_annual_kg=420_000)
    projects.submit_project(session, agency, p.id)
    projects.validate_project(session, verifier, p.id, note="分拣站称重与数据链路核查通过 / scales and data chain checked")
    projects.register_project(session, op, p.id)
    return p.id


def _mall(session: Session, op: Actor, today: dt.date) -> dict[str, int]:
    """Merchants and their rewards, valid this year and next."""
    start, end = dt.date(today.year, 1, 1), dt.date(today.year + 1, 12, 31)
    ids = {}
    for name, email, kind, title, price, cash, stock in (
            ("深圳市仙湖植物园", "counter@xianhu.demo", "park_ticket", "仙湖植物园门票一张 / Fairy Lake botanical garden ticket",
             300, 15_00, 200),
            ("深圳博物馆", "counter@szmuseum.demo", "museum_ticket", "特展门票一张 / special exhibition ticket", 500, 20_00, 80),
            ("深圳通有限公司", "rewards@shenzhentong.demo", "transit_coupon", "5元乘车优惠券 / ¥5 transit coupon", 450, 5_00,
             1000),
            ("绿色生活便利店（蛇口店）", "counter@greenmart.demo", "voucher", "10元环保购物券 / ¥10 green-shopping voucher",
             900, 10_00, 300)):
        m = rewards.register_merchant(session, op, name=name, city="深圳市", province="广东省", email=email)
        ids[email] = rewards.create_reward(session, op, merchant_id=m.id, kind=kind, title=title, points_price=price,
                                           cash_value=cash, stock=stock, valid_from=start, valid_until=end,
                                           city="深圳市").id
    return ids


def _last_batch(session: Session, partner_code: str) -> behaviour.BehaviourBatch | None:
    return session.scalar(select(behaviour.BehaviourBatch).join(
        partners.Partner, partners.Partner.id == behaviour.BehaviourBatch.partner_id)
        .where(partners.Partner.code == partner_code).order_by(behaviour.BehaviourBatch.id.desc()).limit(1))


def _imports(session: Session, now: dt.datetime, rules: Rules) -> str:
    """The three partners' batches, then badges. Each import commits its own chunks: a partner's
    complete batch is not imported again, an interrupted one resumes (same reference, same receipt
    time, so the same rows)."""
    factory = sessionmaker(bind=session.get_bind(), expire_on_commit=False)
    out = []
    for code, make in (("sz-metro", metro_rows), ("sz-bike", bike_rows), ("sk-sorting", sorting_rows)):
        last = _last_batch(session, code)
        if last is not None and last.status == "complete":
            continue
        received = last.received_at if last is not None else now
        today = (received + dt.timedelta(hours=8)).date()   # China time
        ref = last.ref if last is not None else f"{code}-{today:%Y%m%d}"
        session.rollback()   # the import writes from its own sessions: hold no transaction (SQLite's lock)
        if code == "sz-metro":
            r = _import_metro(factory, metro_rows(today), ref, received, rules)
        else:
            r = behaviour.import_rows(factory, code, ref, "api", make(today), rules=rules, received_at=received)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.reasons.items()))
        out.append(f"{code} batch: {r.accepted} rows accepted, {r.rejected} rejected ({reasons or 'none'});")
    badges = recognition.refresh(session, now=now)
    session.commit()
    return " ".join(out + [f"{len(badges)} badges awarded;"])


def _close_period(session: Session, op: Actor, today: dt.date) -> str:
    """Close the transit programme's previous month; its report (if any kg) is verified and issued."""
    transit_id = _programme_id(session, TRANSIT_PROGRAMME)
    period = programme_periods.previous_month(today)
    closed, _ = programme_periods.close_period(session, op, transit_id, period, today=today)
    if closed.report_id is not None:
        projects.verify_report(session, _actor(session, "verifier@lvyuan.demo"), closed.report_id,
                               approved_kg=closed.kg, note="闸机刷卡数据抽样核对一致 / gate data sampled and matched")
        issuance.issue(session, op, closed.report_id)
    session.commit()
    return f"programme period {period} closed ({closed.kg} kg issued);"


def _mall_and_redemptions(session: Session, op: Actor, today: dt.date, now: dt.datetime) -> str:
    """The pool funded by the programme's credit sales, the mall, two redemptions (one used)."""
    funded, _ = rewards_pool.settle(session, op)
    reward = _mall(session, op, today)
    liming, wangfang = _actor(session, "liming@example.demo"), _actor(session, "wangfang@example.demo")
    ticket = rewards.redeem(session, liming, reward["counter@xianhu.demo"], now=now)
    rewards.redeem(session, wangfang, reward["rewards@shenzhentong.demo"], now=now)
    rewards_pool.use_code(session, _actor(session, "counter@xianhu.demo"), ticket.code, now=now)
    session.commit()
    return (f"rewards pool funded {funded.amount} fen by programme credit sales; 4 merchants, "
            "2 redemptions (1 used and paid from the pool).")


def seed_inclusion(session: Session, now: dt.datetime, rules: Rules) -> str:
    """Everything of the carbon-inclusion loop (see the module docstring), in steps that commit on
    their own (imports are transactions per chunk); each step is skipped when its objects exist, so a
    seed interrupted here completes on the next run."""
    today = (now + dt.timedelta(hours=8)).date()   # China time
    op = _actor(session, "operator@tanhui.demo")
    done = ["Carbon inclusion:"]
    if not seeded(session):
        transit_id = _programme_id(session, TRANSIT_PROGRAMME)
        _people(session, op, transit_id, _waste_programme(session, op))
        session.commit()
        done.append(f"3 partners, {len(RESIDENTS)} residents enrolled;")
    done.append(_imports(session, now, rules))
    if programme_periods.last_closed(session, _programme_id(session, TRANSIT_PROGRAMME)) is None:
        done.append(_close_period(session, op, today))
    if session.scalar(select(rewards.Reward.id).limit(1)) is None:
        done.append(_mall_and_redemptions(session, op, today, now))
    session.rollback()
    return " ".join(done) if len(done) > 1 else ""


def complete(session: Session) -> bool:
    """Whether every step of `seed_inclusion` is done (the last one makes the mall)."""
    return session.scalar(select(rewards.Reward.id).limit(1)) is not None
