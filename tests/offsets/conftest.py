"""A small offset market: a seller with an issued batch, a buyer with money, the factor table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session, sessionmaker

import matching
from exchange import instruments, orders, wallets
from exchange.orders import OrderRequest
from exchange.sequencer import Sequencer
from registry import factors
from registry.models import Batch, HolderKind, Project
from tests.factories import Party, World, issued_batch, party, registered_project, world

PRICE = 60_00           # ¥60.00 per tonne
STOCK_KG = 200_000
CASH = 10_000_00        # ¥10,000
SYMBOL = "PV-2024"      # the instrument of the exchange fills


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


def make_book(session: Session, session_factory: sessionmaker[Session], m: Market) -> Sequencer:
    """An instrument for the market's 2024 energy credits, with the seller asking 5 t at ¥59 and 3 t
    at ¥61 on its book; returns the sequencer that matched them (committed)."""
    instruments.create_instrument(session, m.w.operator.actor, symbol=SYMBOL, name_zh="光伏2024", name_en="PV 2024",
                                  kind="pooled", vintage_from=2024, vintage_to=2024, sector="energy",
                                  reference_price=60_00, maker_fee_bp=10, taker_fee_bp=50)
    for qty, price in ((5_000, 59_00), (3_000, 61_00)):
        orders.place_order(session, m.seller.actor, OrderRequest(instrument=SYMBOL, side=matching.SELL, qty_kg=qty,
                                                                 price=price))
    session.commit()
    seq = Sequencer(session_factory)
    seq.run_once()
    return seq
