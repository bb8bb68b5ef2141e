"""A behaviour test world, made through the use cases: an operator, a Shenzhen programme, partners
with their secrets, residents enrolled with external ids."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from registry import partners, projects
from registry.models import HolderKind
from tests.factories import Party, party, world

T0 = dt.datetime(2026, 11, 20, 0, 0)          # 08:00 China time on 20 Nov 2026 (UTC stored)
RECEIVED = dt.datetime(2026, 11, 22, 12, 0)   # the batches' receipt time in domain tests


@dataclass
class BWorld:
    operator: Party
    programme_id: int
    secrets: dict[str, str]
    residents: list[Party] = field(default_factory=list)

    def uid(self, i: int) -> int:
        uid = self.residents[i].actor.user_id
        assert uid is not None
        return uid


def build(session: Session, residents: int = 3) -> BWorld:
    w = world(session)
    programme = projects.create_project(
        session, w.operator.actor, kind="programme", title="深圳低碳出行", methodology_id=w.methodology.id,
        province="广东省", city="深圳市")
    bw = BWorld(w.operator, programme.id, {})
    for code, kind, types in (
            ("sz-metro", "transit", ["CI-TRANSIT", "ENG-CHECKIN"]),
            ("sz-bus", "transit", ["CI-TRANSIT"]),
            ("sz-bike", "bike_share", ["CI-BIKE"]),
            ("sz-sort", "sorting_station", ["CI-WASTE", "ENG-QUIZ"])):
        _, secret = partners.register_partner(session, w.operator.actor, code=code, name=code, kind=kind,
                                              programme_id=programme.id, region="CN-GD-SZ",
                                              behaviour_types=types)
        bw.secrets[code] = secret
    for i in range(residents):
        p = party(session, HolderKind.INDIVIDUAL, f"居民{i}")
        bw.residents.append(p)
        assert p.actor.user_id is not None
        partners.enrol_member(session, None, programme_id=programme.id, user_id=p.actor.user_id,
                              city="深圳市", district="南山区", community=f"社区{i % 2}",
                              external_ids={"sz-metro": f"card-{i}", "sz-bike": f"bike-{i}"})
    session.commit()
    return bw


def row(event_id: str, user: str | None, type_: str, start: dt.datetime, minutes: int = 20,
        **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"event_id": event_id, "type": type_, "started_at": start.isoformat(),
                         "ended_at": (start + dt.timedelta(minutes=minutes)).isoformat()}
    if user is not None:
        r["user"] = user
    r.update({k: str(v) for k, v in extra.items()})
    return r
