"""Builders for test worlds, made through the use cases (so every test world is audited and valid)."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass

from sqlalchemy.orm import Session

from registry import holders, issuance, methodologies, projects
from registry.actors import Actor
from registry.models import Batch, Holder, HolderKind, Methodology, Project

_seq = itertools.count(1)


@dataclass
class Party:
    holder: Holder
    actor: Actor
    email: str

    @property
    def account(self) -> str:
        return f"TH-H-{self.holder.id:06d}"


def party(session: Session, kind: HolderKind | str, name: str | None = None, role: str = "admin",
          password: str | None = None) -> Party:
    n = next(_seq)
    h = holders.create_holder(session, None, kind=kind, name=name or f"{kind}-{n}")
    email = f"user{n}-{h.id}@test.example"
    user = holders.create_user(session, holder_id=h.id, email=email, name=f"User {n}", role=role,
                               password=password)
    session.flush()
    return Party(h, Actor.of(user), email)


@dataclass
class World:
    operator: Party
    verifier: Party
    owner: Party
    buyer: Party
    methodology: Methodology


def world(session: Session) -> World:
    w = World(operator=party(session, HolderKind.OPERATOR, "运营方"),
              verifier=party(session, HolderKind.VERIFIER, "核查机构"),
              owner=party(session, HolderKind.ENTERPRISE, "光伏企业"),
              buyer=party(session, HolderKind.EVENT_ORGANISER, "会务方"),
              methodology=methodologies.create_methodology(
                  session, None, code=f"CI-PV-{next(_seq)}", version="1.0", title_zh="分布式光伏",
                  title_en="Rooftop PV", sector="energy", activity_unit="MWh"))
    session.flush()
    return w


def registered_project(session: Session, w: World, owner: Party | None = None, **kw: object) -> Project:
    owner = owner or w.owner
    args = dict(title="屋顶光伏", methodology_id=w.methodology.id, province="广东省", city="深圳市",
                district="南山区") | kw
    p = projects.create_project(session, owner.actor, **args)  # type: ignore[arg-type]
    projects.submit_project(session, owner.actor, p.id)
    projects.validate_project(session, w.verifier.actor, p.id)
    projects.register_project(session, w.operator.actor, p.id)
    return p


_period = itertools.count(0)


def issued_batch(session: Session, w: World, project: Project, quantity: int, *, year: int = 2024,
                 owner: Party | None = None) -> Batch:
    """Report, verify and issue `quantity` kg for a fresh, non-overlapping period of `year`."""
    owner = owner or w.owner
    day = dt.date(year, 1, 1) + dt.timedelta(days=next(_period) % 360)
    r = projects.submit_report(session, owner.actor, project.id, period_start=day, period_end=day,
                               claimed_kg=quantity)
    projects.verify_report(session, w.verifier.actor, r.id, approved_kg=quantity)
    return issuance.issue(session, w.operator.actor, r.id)
