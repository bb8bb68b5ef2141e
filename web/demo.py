"""Demo data, made through the same use cases as real traffic (so it is audited and consistent)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from exchange.models import Instrument
from registry import holders, issuance, methodologies, projects, units
from registry.actors import Actor
from registry.behaviour_rules import Rules
from registry.db import utcnow
from registry.models import Holder, HolderKind, Project, User

DEMO_PASSWORD = "tanhui-demo"


@dataclass
class SeedResult:
    summary: str
    tokens: dict[str, str] = field(default_factory=dict)


def _holder(session: Session, kind: HolderKind, name: str, name_en: str, city: str, province: str,
            email: str, person: str, credit_code: str | None = None) -> tuple[Holder, Actor]:
    h = holders.create_holder(session, None, kind=kind, name=name, name_en=name_en, city=city,
                              province=province, credit_code=credit_code)
    user = holders.create_user(session, holder_id=h.id, email=email, name=person, role="admin",
                               password=DEMO_PASSWORD)
    session.flush()
    return h, Actor.of(user)


def seed_demo(session: Session, *, now: dt.datetime | None = None, rules: Rules | None = None) -> SeedResult:
    """Seed what is missing, stage by stage (the registry, the market, offsetting, carbon inclusion),
    each recognised by an object it makes; a second call changes nothing and says so, and a database
    seeded by an older version gets the newer stages. `now` (naive UTC, default the clock) dates the
    behaviour data; `rules` default to the app's `BEHAVIOUR_RULES`."""
    from web import demo_inclusion, demo_offsetting

    now = now or utcnow()
    rules = rules or _rules()
    result = SeedResult("")
    done: list[str] = []
    try:
        if not session.scalar(select(User.id).where(User.email == "operator@tanhui.demo")):
            from registry import factors
            factors.sync_shipped(session)
            result = _seed(session)
            session.commit()
            done.append(result.summary)
        if not session.scalar(select(Instrument.id).where(Instrument.symbol == "SZ-TRANSIT-2026")):
            done.append(_seed_market(session))
        if not demo_offsetting.seeded(session):
            done.append(demo_offsetting.seed_offsetting(session))
        if not demo_inclusion.complete(session):
            done.append(demo_inclusion.seed_inclusion(session, now, rules))
    except Exception:
        session.rollback()
        raise
    session.rollback()
    result.summary = " ".join(done) if done else "demo data already present; nothing changed"
    return result


def _rules() -> Rules:
    from flask import current_app, has_app_context

    return Rules.from_mapping(current_app.config.get("BEHAVIOUR_RULES") if has_app_context() else None)


def _actor(session: Session, email: str) -> Actor:
    user = session.scalar(select(User).where(User.email == email))
    assert user is not None
    return Actor.of(user)


def _seed_market(session: Session) -> str:
    """Three instruments with a day of trading, settled by the sequencer, and today's close."""
    from sqlalchemy.orm import sessionmaker

    from exchange import instruments, orders, reference, wallets
    from exchange.sequencer import Sequencer

    op = _actor(session, "operator@tanhui.demo")
    forest_project = session.scalar(select(Project.id).where(Project.title == "安吉毛竹林经营碳汇项目"))
    for kw in (
        dict(symbol="SZ-TRANSIT-2026", name_zh="深圳公共出行碳普惠2026", name_en="Shenzhen transit credits 2026",
             kind="pooled", project_kind="programme", sector="transport", vintage_from=2026, vintage_to=2026,
             reference_price=58_00),
        dict(symbol="CI-ENERGY-2025", name_zh="小微企业能源类减排量2025", name_en="Small-enterprise energy credits 2025",
             kind="pooled", project_kind="project", sector="energy", vintage_from=2024, vintage_to=2025,
             reference_price=62_00),
        dict(symbol=f"P{forest_project:05d}-2025", name_zh="安吉毛竹林碳汇2025", name_en="Anji bamboo sink 2025",
             kind="project", project_id=forest_project, vintage_from=2025, vintage_to=2025, reference_price=75_00),
    ):
        instruments.create_instrument(session, op, **kw)  # type: ignore[arg-type]
    holder_of = {email: _actor(session, email) for email in (
        "esg@sccloud.demo", "events@gba-forum.demo", "liming@example.demo", "programme@sz-carbon.demo",
        "owner@nanshan-solar.demo", "owner@anji-bamboo.demo")}
    for email, fen in (("esg@sccloud.demo", 20_000_000), ("events@gba-forum.demo", 5_000_000),
                       ("liming@example.demo", 100_000)):
        wallets.deposit(session, op, holder_of[email].holder_id, fen, external_ref=f"DEMO-{email}",
                        memo="银行转账入金 / bank transfer")
    book = [
        ("programme@sz-carbon.demo", "SZ-TRANSIT-2026", "sell", 200_000, 59_00),
        ("programme@sz-carbon.demo", "SZ-TRANSIT-2026", "sell", 300_000, 60_00),
        ("owner@nanshan-solar.demo", "CI-ENERGY-2025", "sell", 100_000, 63_00),
        ("owner@nanshan-solar.demo", "CI-ENERGY-2025", "sell", 50_000, 64_00),
        ("owner@anji-bamboo.demo", f"P{forest_project:05d}-2025", "sell", 20_000, 76_00),
        ("esg@sccloud.demo", "CI-ENERGY-2025", "buy", 120_000, 64_00),
        ("esg@sccloud.demo", "SZ-TRANSIT-2026", "buy", 100_000, 57_00),
        ("events@gba-forum.demo", "SZ-TRANSIT-2026", "buy", 30_000, 59_50),
        ("liming@example.demo", "SZ-TRANSIT-2026", "buy", 1_000, 59_00),
    ]
    for email, symbol, side, qty, price in book:
        orders.place_order(session, holder_of[email], orders.OrderRequest(
            instrument=symbol, side=side, qty_kg=qty, price=price))
    session.commit()
    factory = sessionmaker(bind=session.get_bind())
    # Yesterday's close (nothing traded: the listing price carries forward) gives the history a first
    # row without closing today, whose trades the 15:00 job will price.
    import datetime as dt
    closed = reference.close_all(factory, reference.china_today() - dt.timedelta(days=1))
    applied = Sequencer(factory).run_once()
    return (f"Market: 3 instruments, {applied} engine commands applied (orders and bands), "
            f"{sum(r.ok for r in closed)} reference prices published for yesterday.")


def _seed(session: Session) -> SeedResult:
    _, op = _holder(session, HolderKind.OPERATOR, "碳惠平台运营中心", "Tanhui Registry Operations", "深圳市",
                    "广东省", "operator@tanhui.demo", "王运营")
    _, ver_gd = _holder(session, HolderKind.VERIFIER, "广东绿源核查技术有限公司", "Guangdong Lvyuan Verification Co.",
                        "广州市", "广东省", "verifier@lvyuan.demo", "陈核查", "91440101MA5DEMO01X")
    _, ver_sc = _holder(session, HolderKind.VERIFIER, "四川天府碳核查中心", "Sichuan Tianfu Carbon Verification Centre",
                        "成都市", "四川省", "verifier@tianfu.demo", "刘核查", "91510100MA6DEMO02Y")
    _, pv = _holder(session, HolderKind.ENTERPRISE, "深圳南山光明光伏能源有限公司", "Nanshan Guangming Solar Ltd.",
                    "深圳市", "广东省", "owner@nanshan-solar.demo", "张光伏", "91440300MA5DEMO03Z")
    _, ee = _holder(session, HolderKind.ENTERPRISE, "成都锦江节能科技有限公司", "Chengdu Jinjiang Energy Efficiency Co.",
                    "成都市", "四川省", "owner@jinjiang-ee.demo", "李节能", "91510104MA6DEMO04A")
    _, forest = _holder(session, HolderKind.ENTERPRISE, "安吉竹林碳汇专业合作社", "Anji Bamboo Carbon Sink Cooperative",
                        "湖州市", "浙江省", "owner@anji-bamboo.demo", "周林业", "93330523MA2DEMO05B")
    _, agency = _holder(session, HolderKind.AGENCY, "深圳市碳普惠管理中心", "Shenzhen Carbon Inclusion Centre",
                        "深圳市", "广东省", "programme@sz-carbon.demo", "黄普惠", "12440300MB2DEMO06C")
    _, event = _holder(session, HolderKind.EVENT_ORGANISER, "2026大湾区低碳发展论坛组委会",
                       "Greater Bay Area Low-Carbon Forum 2026 Organising Committee", "深圳市", "广东省",
                       "events@gba-forum.demo", "吴会务")
    company_h, company = _holder(session, HolderKind.ENTERPRISE, "华南云软件科技有限公司", "South China Cloud Software Ltd.",
                                 "广州市", "广东省", "esg@sccloud.demo", "郑可持续", "91440106MA5DEMO07D")
    person_h, person = _holder(session, HolderKind.INDIVIDUAL, "李明", "Li Ming", "深圳市", "广东省",
                               "liming@example.demo", "李明")

    m = {code: methodologies.create_methodology(session, None, code=code, version=ver, title_zh=zh, title_en=en,
                                                  sector=sector, activity_unit=unit)
         for code, ver, zh, en, sector, unit in [
             ("CI-PV", "1.0", "分布式光伏发电碳普惠方法学", "Distributed rooftop solar PV", "energy", "MWh"),
             ("CI-EE", "1.0", "工商业节能改造碳普惠方法学", "Commercial energy-efficiency retrofit", "energy", "MWh saved"),
             ("CI-FOREST", "1.0", "小型林业碳汇碳普惠方法学", "Small-scale forestry carbon sink", "forestry", "t CO2e"),
             ("CI-TRANSIT", "1.0", "公共交通低碳出行碳普惠方法学", "Low-carbon public transit trips", "transport",
              "passenger-km"),
             ("CI-WASTE", "1.0", "生活垃圾分类回收碳普惠方法学", "Household waste sorting and recycling", "waste", "kg"),
         ]}

    def registered(owner: Actor, verifier: Actor, **kw: object) -> int:
        p = projects.create_project(session, owner, **kw)  # type: ignore[arg-type]
        projects.submit_project(session, owner, p.id)
        projects.validate_project(session, verifier, p.id, note="文件审核与现场核查通过 / desk review and site visit passed")
        projects.register_project(session, op, p.id)
        return p.id

    def issued(owner: Actor, verifier: Actor, project_id: int, start: dt.date, end: dt.date,
               claimed: int, approved: int) -> None:
        r = projects.submit_report(session, owner, project_id, period_start=start, period_end=end, claimed_kg=claimed)
        projects.verify_report(session, verifier, r.id, approved_kg=approved,
                               note=None if approved == claimed else "扣除自用电量 / self-consumption deducted")
        issuance.issue(session, op, r.id)

    pv_id = registered(pv, ver_gd, title="南山科技园屋顶分布式光伏项目", title_en="Nanshan Science Park rooftop PV",
                       methodology_id=m["CI-PV"].id, province="广东省", city="深圳市", district="南山区",
                       estimated_annual_kg=620_000,
                       documents=[{"name": "项目设计文件.pdf", "kind": "PDD"}, {"name": "并网验收报告.pdf", "kind": "grid"}])
    issued(pv, ver_gd, pv_id, dt.date(2024, 1, 1), dt.date(2024, 12, 31), 612_400, 598_750)
    issued(pv, ver_gd, pv_id, dt.date(2025, 1, 1), dt.date(2025, 12, 31), 640_120, 640_120)
    ee_id = registered(ee, ver_sc, title="锦江宾馆中央空调节能改造", title_en="Jinjiang hotel chiller retrofit",
                       methodology_id=m["CI-EE"].id, province="四川省", city="成都市", district="锦江区",
                       estimated_annual_kg=180_000, documents=[{"name": "节能量审核报告.pdf", "kind": "audit"}])
    issued(ee, ver_sc, ee_id, dt.date(2025, 1, 1), dt.date(2025, 12, 31), 176_300, 171_900)
    forest_id = registered(forest, ver_gd, title="安吉毛竹林经营碳汇项目", title_en="Anji moso bamboo management",
                           methodology_id=m["CI-FOREST"].id, province="浙江省", city="湖州市", district="安吉县",
                           estimated_annual_kg=250_000)
    issued(forest, ver_gd, forest_id, dt.date(2025, 1, 1), dt.date(2025, 12, 31), 262_000, 231_500)
    prog_id = registered(agency, ver_gd, kind="programme", title="深圳市民公共交通低碳出行计划",
                         title_en="Shenzhen residents' low-carbon transit programme", methodology_id=m["CI-TRANSIT"].id,
                         province="广东省", city="深圳市", estimated_annual_kg=3_500_000)
    issued(agency, ver_gd, prog_id, dt.date(2026, 1, 1), dt.date(2026, 3, 31), 905_433, 905_433)
    issued(agency, ver_gd, prog_id, dt.date(2026, 4, 1), dt.date(2026, 6, 30), 987_120, 987_120)

    # Pipeline in every state, for the operator's and verifiers' queues.
    waiting = projects.create_project(session, pv, title="光明区物流园屋顶光伏二期", title_en="Guangming logistics park PV phase 2",
                                      methodology_id=m["CI-PV"].id, province="广东省", city="深圳市", district="光明区")
    projects.submit_project(session, pv, waiting.id)
    bad = projects.create_project(session, ee, title="锦江写字楼照明改造", methodology_id=m["CI-EE"].id,
                                  province="四川省", city="成都市", district="锦江区")
    projects.submit_project(session, ee, bad.id)
    projects.reject_project(session, ver_sc, bad.id, ["基准线能耗数据不足12个月 / baseline shorter than 12 months"])
    projects.create_project(session, forest, title="安吉竹林二期（草稿）", methodology_id=m["CI-FOREST"].id,
                            province="浙江省", city="湖州市", district="安吉县")

    # Buyers acquire units, then retire them.
    to = {h.id: holders.account_of(session, h.id).number for h in (company_h, person_h)}
    event_acc = holders.account_of(session, event.holder_id).number
    units.transfer(session, pv, to_account=event_acc, selection=units.Selection(quantity_kg=150_000),
                   memo="论坛碳中和采购 / forum offset purchase")
    units.transfer(session, agency, to_account=event_acc, selection=units.Selection(quantity_kg=35_000))
    units.transfer(session, ee, to_account=to[company_h.id], selection=units.Selection(quantity_kg=80_000))
    units.transfer(session, agency, to_account=to[person_h.id], selection=units.Selection(quantity_kg=2_500))
    units.retire(session, event, selection=units.Selection(quantity_kg=182_640),
                 beneficiary="2026大湾区低碳发展论坛", jurisdiction="广东省深圳市福田区", purpose="event_offset",
                 footprint_ref="FP-GBA-2026", message="本次论坛碳排放已全部抵消 / the forum's emissions are fully offset")
    units.retire(session, company, selection=units.Selection(quantity_kg=64_200),
                 beneficiary="华南云软件科技有限公司", jurisdiction="广东省广州市天河区", purpose="organisational",
                 message="2025年度办公与差旅排放 / 2025 office and travel emissions")
    units.retire(session, person, selection=units.Selection(quantity_kg=1_850), beneficiary="李明",
                 jurisdiction="广东省深圳市南山区", purpose="personal", message="我的2025年碳中和")

    tokens = {}
    for email in ("operator@tanhui.demo", "verifier@lvyuan.demo", "owner@nanshan-solar.demo",
                  "events@gba-forum.demo", "esg@sccloud.demo", "liming@example.demo"):
        user = session.scalar(select(User).where(User.email == email))
        assert user is not None
        tokens[email] = holders.create_token(session, user, name="demo")[1]
    summary = ("demo seeded: 10 holders, 5 methodologies, 7 projects/programmes (4 registered with 6 issuances), "
               f"4 transfers, 3 retirements. Log in with any demo email and password '{DEMO_PASSWORD}', "
               "e.g. operator@tanhui.demo.")
    return SeedResult(summary, tokens)
