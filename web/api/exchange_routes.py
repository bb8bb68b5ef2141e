"""API v1 of the exchange: instruments, depth and trades, orders, wallets."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import current_app
from sqlalchemy import func, or_, select, true
from sqlalchemy.orm import Session, joinedload

from exchange import instruments, market_data, notify, orders, reference, wallets
from exchange.errors import EngineError
from exchange.models import (
    CommandStatus,
    Instrument,
    Journal,
    Order,
    OrderCommand,
    OrderStatus,
    Posting,
    Trade,
    Withdrawal,
)
from registry.actors import Actor
from web.api import schemas as s
from web.api.blueprint import bp
from web.api.core import AfterCommit, endpoint, paginate
from web.extensions import db

# ---- public market data ----------------------------------------------------------------------


@endpoint(bp, "/instruments", summary="Listed instruments: reference price, band, last trade, today's volume",
          tags=("market",), response=s.InstrumentSummaryOut, many=True)
def list_instruments(session: Session, actor: Actor | None) -> Any:
    return market_data.instruments(session)


@endpoint(bp, "/instruments/<symbol>", summary="One instrument's ticker and contract terms", tags=("market",),
          response=s.InstrumentSummaryOut)
def get_instrument(session: Session, actor: Actor | None, symbol: str) -> Any:
    return market_data.summary(session, instruments.get_instrument(session, symbol))


@endpoint(bp, "/instruments/<symbol>/history", summary="Daily OHLC, VWAP, volume and reference price",
          tags=("market",), query=s.HistoryQuery, response=s.DailyOut, many=True)
def get_history(session: Session, actor: Actor | None, symbol: str, *, query: dict[str, Any]) -> Any:
    return market_data.daily_history(session, instruments.get_instrument(session, symbol).id, query["days"])


@endpoint(bp, "/instruments/<symbol>/reference-prices", summary="Reference-price history with every input",
          tags=("market",), query=s.HistoryQuery, response=s.ReferenceOut, many=True)
def get_reference_prices(session: Session, actor: Actor | None, symbol: str, *, query: dict[str, Any]) -> Any:
    return market_data.reference_history(session, instruments.get_instrument(session, symbol).id, query["days"])


@endpoint(bp, "/external-indices", summary="External price indices (CEA, CCER) entered by the operator",
          tags=("market",), query=s.ExternalIndexQuery, response=s.ExternalIndexOut, many=True)
def list_external_indices(session: Session, actor: Actor | None, *, query: dict[str, Any]) -> Any:
    return reference.external_indices(session, query.get("code"))


@endpoint(bp, "/external-indices", "POST", summary="Operator enters an external index value",
          tags=("operator",), auth=True, body=s.ExternalIndexIn, response=s.ExternalIndexOut, status=201)
def create_external_index(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    row = reference.set_external_index(session, actor, body["code"], body["trading_day"], body["price"],
                                       body["source"])
    return {"code": row.code, "trading_day": row.trading_day.isoformat(), "price": row.price, "source": row.source,
            "entered_at": row.entered_at.isoformat() + "Z"}


@endpoint(bp, "/instruments/<symbol>/blend", "POST", summary="Operator publishes the reference-price blend",
          tags=("operator",), auth=True, body=s.BlendIn, response=s.InstrumentOut)
def set_blend(session: Session, actor: Actor, symbol: str, *, body: dict[str, Any]) -> Any:
    return reference.set_blend(session, actor, symbol, body["weights"])


def depth_of(session: Session, inst: Instrument, levels: int) -> dict[str, Any]:
    """Aggregated from the orders the sequencer has put on the book (committed state)."""
    def side(name: str, best_first: Any) -> list[dict[str, int]]:
        rows = session.execute(
            select(Order.price, func.sum(Order.remaining_kg), func.count())
            .where(Order.instrument_id == inst.id, Order.status == OrderStatus.OPEN, Order.side == name,
                   Order.remaining_kg > 0)
            .group_by(Order.price).order_by(best_first).limit(levels)).all()
        return [{"price": p, "qty_kg": int(q), "orders": int(n)} for p, q, n in rows]

    return {"symbol": inst.symbol, "bids": side("buy", Order.price.desc()), "asks": side("sell", Order.price.asc())}


@endpoint(bp, "/instruments/<symbol>/depth", summary="Order book depth, aggregated by price",
          tags=("market",), query=s.DepthQuery, response=s.DepthOut)
def get_depth(session: Session, actor: Actor | None, symbol: str, *, query: dict[str, Any]) -> Any:
    return depth_of(session, instruments.get_instrument(session, symbol), query["levels"])


@endpoint(bp, "/instruments/<symbol>/trades", summary="Recent trades, newest first", tags=("market",),
          query=s.PageQuery, response=s.TradeOut, paginated=True)
def get_trades(session: Session, actor: Actor | None, symbol: str, *, query: dict[str, Any]) -> Any:
    inst = instruments.get_instrument(session, symbol)
    stmt = select(Trade).where(Trade.instrument_id == inst.id).order_by(Trade.id.desc())
    items, total = paginate(session, stmt, query["page"], query["per_page"])
    return items, total, query["page"], query["per_page"]


# ---- operator: instruments, deposits, withdrawals -------------------------------------------


@endpoint(bp, "/instruments", "POST", summary="Operator lists an instrument", tags=("operator",), auth=True,
          body=s.InstrumentCreate, response=s.InstrumentOut, status=201)
def create_instrument(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    return instruments.create_instrument(session, actor, **body)


def _status_op(action: str, status: str, summary: str) -> None:
    def op(session: Session, actor: Actor, symbol: str, *, body: dict[str, Any]) -> Any:
        return instruments.set_status(session, actor, symbol, status, body["reason"])
    op.__name__ = f"instrument_{action}"
    endpoint(bp, f"/instruments/<symbol>/{action}", "POST", summary=summary, tags=("operator",), auth=True,
             body=s.StatusChange, response=s.InstrumentOut)(op)


_status_op("halt", "halted", "Operator halts trading")
_status_op("resume", "active", "Operator resumes trading")
_status_op("delist", "delisted", "Operator delists an instrument")


@endpoint(bp, "/deposits", "POST", summary="Operator credits a holder's wallet (money received)",
          tags=("operator",), auth=True, body=s.DepositCreate, response=s.DepositOut, status=201)
def create_deposit(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    return wallets.deposit(session, actor, body["holder_id"], body["amount"],
                           external_ref=body.get("external_ref"), memo=body.get("memo"))


@endpoint(bp, "/withdrawals/<int:withdrawal_id>/approve", "POST", summary="Operator pays a withdrawal",
          tags=("operator",), auth=True, response=s.WithdrawalOut)
def approve_withdrawal(session: Session, actor: Actor, withdrawal_id: int) -> Any:
    return wallets.decide_withdrawal(session, actor, withdrawal_id, approve=True)


@endpoint(bp, "/withdrawals/<int:withdrawal_id>/reject", "POST", summary="Operator rejects a withdrawal",
          tags=("operator",), auth=True, body=s.WithdrawalDecision, response=s.WithdrawalOut)
def reject_withdrawal(session: Session, actor: Actor, withdrawal_id: int, *, body: dict[str, Any]) -> Any:
    return wallets.decide_withdrawal(session, actor, withdrawal_id, approve=False, reason=body.get("reason"))


# ---- my wallet --------------------------------------------------------------------------------


@endpoint(bp, "/wallet", summary="My cash: available, held, and recent ledger entries (minor units)",
          tags=("wallet",), auth=True, response=s.WalletOut)
def my_wallet(session: Session, actor: Actor) -> Any:
    bal = wallets.balance(session, actor.holder_id)
    from exchange.models import CashAccount
    mine = select(CashAccount.id).where(CashAccount.holder_id == actor.holder_id)
    rows = session.execute(
        select(Journal.id, Journal.kind, Journal.ref, Journal.created_at, CashAccount.kind, Posting.amount)
        .join(Posting, Posting.journal_id == Journal.id).join(CashAccount, CashAccount.id == Posting.account_id)
        .where(Posting.account_id.in_(mine)).order_by(Posting.id.desc()).limit(50)).all()
    entries = [{"journal_id": j, "kind": k.value, "ref": ref, "at": at.isoformat() + "+00:00",
                "account": acc.value, "amount": amt} for j, k, ref, at, acc, amt in rows]
    return {"currency": bal.currency, "available": bal.available, "held": bal.held, "total": bal.total,
            "entries": entries}


@endpoint(bp, "/wallet/withdrawals", "POST", summary="Ask to withdraw; held until an operator pays it",
          tags=("wallet",), auth=True, body=s.WithdrawalCreate, response=s.WithdrawalOut, status=201)
def create_withdrawal(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    return wallets.request_withdrawal(session, actor, body["amount"], bank_reference=body.get("bank_reference"))


@endpoint(bp, "/wallet/withdrawals", summary="My withdrawals", tags=("wallet",), auth=True,
          response=s.WithdrawalOut, many=True)
def list_withdrawals(session: Session, actor: Actor) -> Any:
    stmt = select(Withdrawal).order_by(Withdrawal.id.desc()).limit(100)
    if not actor.is_operator:
        stmt = stmt.where(Withdrawal.holder_id == actor.holder_id)
    return session.scalars(stmt).all()


# ---- orders -----------------------------------------------------------------------------------


def _pending_of(order_id: Any) -> Any:
    """How many of the order's commands the engine has not applied yet."""
    return (select(func.count()).select_from(OrderCommand)
            .where(OrderCommand.order_id == order_id, OrderCommand.status == CommandStatus.PENDING))


def order_view(session: Session, order: Order, pending: int | None = None) -> dict[str, Any]:
    """The order with its fills; `pending` (its unapplied commands) is counted unless given."""
    trades = session.scalars(select(Trade).where(or_(Trade.buy_order_id == order.id, Trade.sell_order_id == order.id))
                             .order_by(Trade.id)).all()
    if pending is None:
        pending = session.scalar(_pending_of(order.id)) or 0
    fills = [{"id": t.id, "price": t.price, "qty_kg": t.qty_kg, "notional": t.notional, "executed_at": t.executed_at,
              "side": order.side, "role": "maker" if t.maker_order_id == order.id else "taker",
              "fee": t.buyer_fee if order.side == "buy" else t.seller_fee} for t in trades]
    return {c: getattr(order, c) for c in (
        "id", "side", "order_type", "tif", "price", "qty_kg", "filled_kg", "remaining_kg", "reason", "post_only",
        "stp", "expire_at", "cash_held", "notional_paid", "fees_paid", "created_at", "updated_at")} | {
        "instrument": order.instrument.symbol, "status": order.status.value, "fills": fills,
        "pending_commands": pending}


def _await(command_id: int, order_id: int) -> Any:
    """Wake the embedded sequencer and wait a bounded time for it to apply the command (woken by
    exchange.notify, re-reading the command's status after each wake)."""
    seq = current_app.extensions.get("sequencer")
    if seq is not None:
        seq.wake()
    session = db.session

    def done() -> bool:
        status = session.scalar(select(OrderCommand.status).where(OrderCommand.id == command_id))
        session.rollback()
        return status is not CommandStatus.PENDING

    watch: notify.CommandWatch = current_app.extensions["command_watch"]
    watch.wait(command_id, done, float(current_app.config.get("ORDER_WAIT_S", 2.0)))
    # The order with its instrument, the command's fate and the order's pending count in one query.
    command = select(OrderCommand.status, OrderCommand.kind).where(OrderCommand.id == command_id).subquery()
    row = session.execute(select(Order, _pending_of(Order.id).scalar_subquery(), command.c.status, command.c.kind)
                          .outerjoin(command, true()).where(Order.id == order_id)
                          .options(joinedload(Order.instrument))).one()
    order, pending, status, kind = row
    if status is CommandStatus.FAILED:
        session.rollback()
        # The error text stays in the command's result and the audit log; the client learns what
        # happened to its order, not our internals.
        what = (f"order {order_id} was rejected (reason engine_error) and its hold released" if kind == "place"
                else f"order {order_id} is unchanged")
        raise EngineError(f"the exchange could not apply this {kind} (command {command_id}); {what}",
                          field="order_id")
    view = order_view(session, order, pending)
    session.rollback()
    return view


@endpoint(bp, "/orders", "POST", summary="Place an order; waits briefly for the engine's result",
          tags=("orders",), auth=True, body=s.OrderCreate, response=s.OrderOut, status=201,
          errors=("500",))   # engine_error: the sequencer set the command aside
def create_order(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    if body.get("expire_at") is not None:
        body["expire_at"] = body["expire_at"].astimezone(dt.UTC).replace(tzinfo=None)
    order, cmd = orders.place_order(session, actor, orders.OrderRequest(**body))
    oid, cid = order.id, cmd.id
    return AfterCommit(lambda: _await(cid, oid))


@endpoint(bp, "/orders", summary="My orders, newest first", tags=("orders",), auth=True,
          query=s.OrdersQuery, response=s.OrderOut, paginated=True)
def list_orders(session: Session, actor: Actor, *, query: dict[str, Any]) -> Any:
    stmt = select(Order).where(Order.holder_id == actor.holder_id).order_by(Order.id.desc())
    status = query.get("status")
    if status == "active":
        stmt = stmt.where(Order.status.in_([OrderStatus.PENDING, OrderStatus.OPEN]))
    elif status:
        stmt = stmt.where(Order.status == status)
    if query.get("instrument"):
        stmt = stmt.where(Order.instrument_id == instruments.get_instrument(session, query["instrument"]).id)
    items, total = paginate(session, stmt, query["page"], query["per_page"])
    return [order_view(session, o) for o in items], total, query["page"], query["per_page"]


@endpoint(bp, "/orders/<int:order_id>", summary="One of my orders with its fills", tags=("orders",), auth=True,
          response=s.OrderOut)
def get_order(session: Session, actor: Actor, order_id: int) -> Any:
    return order_view(session, orders.get_order(session, actor, order_id))


@endpoint(bp, "/orders/<int:order_id>/cancel", "POST", summary="Cancel my order", tags=("orders",), auth=True,
          response=s.OrderOut, errors=("500",))
def cancel_order(session: Session, actor: Actor, order_id: int) -> Any:
    cmd = orders.cancel_order(session, actor, order_id)
    cid = cmd.id
    return AfterCommit(lambda: _await(cid, order_id))


@endpoint(bp, "/orders/<int:order_id>/reduce", "POST", summary="Reduce my resting order (keeps priority)",
          tags=("orders",), auth=True, body=s.ReduceRequest, response=s.OrderOut, errors=("500",))
def reduce_order(session: Session, actor: Actor, order_id: int, *, body: dict[str, Any]) -> Any:
    cmd = orders.reduce_order(session, actor, order_id, body["by_kg"])
    cid = cmd.id
    return AfterCommit(lambda: _await(cid, order_id))


@endpoint(bp, "/orders/<int:order_id>/replace", "POST", summary="Move my resting order to a new price",
          tags=("orders",), auth=True, body=s.ReplaceRequest, response=s.OrderOut, errors=("500",))
def replace_order(session: Session, actor: Actor, order_id: int, *, body: dict[str, Any]) -> Any:
    cmd = orders.replace_order(session, actor, order_id, body["price"])
    cid = cmd.id
    return AfterCommit(lambda: _await(cid, order_id))


