"""Demo offsetting: footprints, fixed-price listings and offset orders, made through the use cases.

The forum's organising committee calculates the footprint of its 2-day, 300-attendee carbon-inclusion
conference (the worked case of tests/offsets/test_footprints.py: 77,095 kg), offsets it from a listing
paid by wallet (filled and retired at once, with its certificate), so the conference's neutrality
statement says carbon neutral. The company calculates its 2025 footprint and quotes an offset of part
of it from the bamboo-forest listing, which it then cancels with a reason; the resident calculates a personal footprint. Card orders need Stripe and are
left out.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from exchange import footprints, offsets
from exchange.offset_models import Footprint, OffsetStatus
from registry.actors import Actor
from registry.models import Project, User

CONFERENCE_NAME = "大湾区低碳论坛 2026 · 碳普惠分论坛 / GBA Low-Carbon Forum 2026 carbon-inclusion conference"
CONFERENCE = {
    "name": CONFERENCE_NAME, "region": "CN-GD", "year": 2026,
    "venue": {"electricity_kwh": 6000},
    "attendee_travel": [
        {"mode": "flight_domestic", "people": 120, "distance_km": 2000, "round_trip": True},
        {"mode": "hsr", "people": 80, "distance_km": 1000, "round_trip": True},
        {"mode": "metro", "people": 100, "distance_km": 30, "days": 2},
    ],
    "hotel_room_nights": 400,
    "meals": [{"type": "medium_meat", "count": 1200}],
}
CONFERENCE_REDUCTIONS = [
    "会场全部使用LED照明，非会议时段关闭空调 / LED lighting; air conditioning off between sessions",
    "电子票务与无纸化会议资料 / e-tickets and paperless conference materials",
    "本地参会者按地铁线路指引出行 / local attendees guided to the metro",
]
COMPANY_FOOTPRINT = {
    "name": "华南云软件科技有限公司 2025年度运营碳足迹 / South China Cloud Software 2025 operations",
    "region": "CN-GD", "year": 2025,
    "fuels": [{"fuel": "diesel", "quantity": 800}],               # L, the data room's backup generator
    "electricity_kwh": 420_000,                                    # offices and data room
    "business_travel": [
        {"mode": "flight_domestic", "people": 60, "distance_km": 1_300, "round_trip": True},
        {"mode": "hsr", "people": 150, "distance_km": 140, "round_trip": True},   # Guangzhou–Shenzhen
    ],
    "commuting": [{"mode": "metro", "people": 180, "distance_km": 18, "round_trip": True, "days": 230}],
}
PERSONAL_FOOTPRINT = {
    "name": "李明 2026 个人碳足迹 / Li Ming's 2026 footprint", "region": "CN-GD", "year": 2026,
    "electricity_kwh": 2_400, "gas_m3": 120, "water_m3": 60,
    "transit": [{"mode": "metro", "distance_km": 15, "round_trip": True, "days": 220}],
    "flights": [{"mode": "flight_domestic", "distance_km": 1_200, "round_trip": True}],
    "diet": {"type": "low_meat", "days": 365},
}


def _actor(session: Session, email: str) -> Actor:
    user = session.scalar(select(User).where(User.email == email))
    assert user is not None
    return Actor.of(user)


def seeded(session: Session) -> bool:
    return session.scalar(select(Footprint.id).where(Footprint.name == CONFERENCE_NAME)) is not None


def seed_offsetting(session: Session) -> str:
    """Listings, footprints and offset orders (see the module docstring), in one transaction (the API
    commits the payment before the fill; here all or nothing, so a failed seed leaves no half)."""
    pv, forest = _actor(session, "owner@nanshan-solar.demo"), _actor(session, "owner@anji-bamboo.demo")
    event, company = _actor(session, "events@gba-forum.demo"), _actor(session, "esg@sccloud.demo")
    person = _actor(session, "liming@example.demo")
    project = {title: pid for pid, title in session.execute(select(Project.id, Project.title))}
    offsets.create_listing(session, pv, project_id=project["南山科技园屋顶分布式光伏项目"], vintage=2025,
                           quantity_kg=150_000, price=68_00)
    offsets.create_listing(session, forest, project_id=project["安吉毛竹林经营碳汇项目"], vintage=2025,
                           quantity_kg=60_000, price=82_00)

    conference = footprints.create_footprint(session, event, "event", CONFERENCE, reductions=CONFERENCE_REDUCTIONS)
    order = offsets.create_offset(
        session, event, footprint_id=conference.id, beneficiary="大湾区低碳论坛 2026 碳普惠分论坛",
        jurisdiction="广东省深圳市福田区", preference={"project_type": "energy"},
        message="分论坛的碳排放已通过深圳屋顶光伏减排量全部抵消 / the conference's emissions are offset "
                "with Shenzhen rooftop-solar credits")
    offsets.confirm_offset(session, event, order.id)
    filled = offsets.fulfil(session, order.id)
    assert filled.status is OffsetStatus.RETIRED, filled.reason

    org = footprints.create_footprint(session, company, "organisation", COMPANY_FOOTPRINT)
    quote = offsets.create_offset(session, company, footprint_id=org.id, quantity_kg=50_000, beneficiary="华南云软件科技有限公司",
                                  preference={"project_type": "forestry"},
                                  message="2025年度运营排放碳中和 / 2025 operations carbon neutral")
    offsets.cancel_offset(session, company, quote.id,
                          "预算待董事会审批，下季度再采购 / budget awaits board approval; buying next quarter")
    personal = footprints.create_footprint(session, person, "personal", PERSONAL_FOOTPRINT)
    session.commit()
    return (f"Offsetting: 2 listings; footprints of the conference ({conference.total_kg} kg), the company "
            f"({org.total_kg} kg) and a resident ({personal.total_kg} kg); the conference offset by order "
            f"{filled.id} (certificate {filled.certificate_number}: carbon neutral); order {quote.id} cancelled.")
