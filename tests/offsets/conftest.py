"""A small offset market: a seller with an issued batch, a buyer with money, the factor table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session

from exchange import wallets
from registry import factors
from registry.models import Batch, HolderKind, Project
from tests.factories import Party, World, issued_batch, party, registered_project, world

PRICE = 60_00           # ¥60.00 per tonne
STOCK_KG = 200_000
CASH = 10_000_00        # ¥10,000


@dataclass
class Market:
    w: World
    seller: Party
    buyer: Party
    project: Project
    batch: Batch


def make_market(session: Session, buyers: int = 1) -> Market:
    factors.sync_shipped(session)
    w = world(session)
    project = registered_project(session, w)
    batch = issued_batch(session, w, project, STOCK_KG, year=2024)
    buyer = party(session, HolderKind.EVENT_ORGANISER, "湾区论坛组委会")
    wallets.deposit(session, w.operator.actor, buyer.holder.id, CASH)
    return Market(w, w.owner, buyer, project, batch)


@pytest.fixture
def market(session: Session) -> Market:
    m = make_market(session)
    session.commit()
    return m
