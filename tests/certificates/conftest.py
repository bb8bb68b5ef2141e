"""A retirement spanning two projects and vintages, and a signing key, for the certificate tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session

from registry import units
from registry.certificates import SigningKey
from registry.models import Batch, Retirement
from tests.factories import World, issued_batch, registered_project, world

BASE_URL = "https://registry.tanhui.example/"


@dataclass
class Retired:
    world: World
    retirement: Retirement
    b1: Batch
    b2: Batch


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def retired(session: Session) -> Retired:
    """182,640 kg retired for 大湾区论坛: 60,000 kg of a 2023 batch (bought in two pieces that the
    certificate merges into one range) and 122,640 kg of a 2024 batch of another project."""
    w = world(session)
    p1 = registered_project(session, w, title="屋顶光伏", title_en="Rooftop PV")
    p2 = registered_project(session, w, title="社区垃圾分类", title_en=None)
    b1 = issued_batch(session, w, p1, 100_000, year=2023)
    b2 = issued_batch(session, w, p2, 200_000, year=2024)
    sel = units.Selection
    units.transfer(session, w.owner.actor, to_account=w.buyer.account, selection=sel(serials=[b1.serial(1, 30_000)]))
    units.transfer(session, w.owner.actor, to_account=w.buyer.account,
                   selection=sel(serials=[b1.serial(30_001, 60_000)]))
    units.transfer(session, w.owner.actor, to_account=w.buyer.account,
                   selection=sel(serials=[b2.serial(1_001, 123_640)]))
    r = units.retire(session, w.buyer.actor, selection=sel(quantity_kg=182_640), beneficiary="大湾区论坛 GBA Forum",
                     jurisdiction="广东省深圳市福田区", purpose="event_offset", footprint_ref="FP-GBA-2026",
                     message="本次论坛碳排放已全部抵消 / the forum's emissions are fully offset")
    session.commit()
    return Retired(w, r, b1, b2)
