"""The daily reference price and the next day's band.

A trading day is a China date (UTC+8, no daylight saving). For each instrument and day:

- the day's trades (executed_at in [day 00:00 CST, next day 00:00 CST)) give open (the first
  trade), high, low, volume, turnover (sum of notionals), trade count and the VWAP
  ``div_half_up(Σ price·qty, Σ qty)``;
- close = the VWAP (the Shanghai exchange's rule), or the previous reference price when nothing
  traded (method ``carried_forward``);
- reference = close rounded half up to the tick (method ``vwap`` / ``carried_forward``), or, when
  the instrument publishes blend weights, the weighted blend of close and the latest operator-entered
  external index (CEA, CCER) on or before the day (method ``blend``). A weighted index without a
  value fails closed (Conflict, code ``external_index_missing``): a weight is never dropped;
- the band for the next day is ``band_around(reference, band_bp, tick)``; the sequencer moves the
  engine's band when it applies the queued ``set_band`` command, and then writes it on the instrument.

Every input (the trades summary, each index with its price, day, source and weight, the formula) is
stored in ``ReferencePrice.inputs``. Integer arithmetic only: no float touches a price.

``close_day`` is idempotent: closing a day that is already closed returns the stored row and writes
nothing (so a job that runs twice, or on two workers, publishes once). Closing a day earlier than a
day already closed is a Conflict (the published history is append-only).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from exchange.instruments import get_instrument
from exchange.models import (
    CommandStatus,
    ExternalIndex,
    Instrument,
    InstrumentStatus,
    OrderCommand,
    ReferencePrice,
    Trade,
)
from exchange.pricing import band_around, div_half_up
from registry import audit
from registry.actors import Actor
from registry.db import utcnow
from registry.errors import Conflict, InvalidInput, RegistryError
from registry.models import HolderKind

log = logging.getLogger(__name__)

CHINA = dt.timezone(dt.timedelta(hours=8), "CST")
INDEX_CODES = ("CEA", "CCER")
VWAP = "vwap"
FULL_WEIGHT = 10_000


# --- trading days ---------------------------------------------------------------------------------

def china_date(at: dt.datetime) -> dt.date:
    """The China trading day of a naive-UTC (or aware) instant."""
    aware = at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at
    return aware.astimezone(CHINA).date()


def china_today() -> dt.date:
    return china_date(utcnow())


def day_window(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a China trading day as naive UTC datetimes (the database's time scale)."""
    start = dt.datetime.combine(day, dt.time(0), tzinfo=CHINA).astimezone(dt.UTC).replace(tzinfo=None)
    return start, start + dt.timedelta(days=1)


# --- integer helpers -------------------------------------------------------------------------------

def to_tick(numerator: int, denominator: int, tick: int) -> int:
    """round_half_up(numerator / denominator) to a multiple of `tick`, in one rounding."""
    return div_half_up(numerator, denominator * tick) * tick


def _int(v: Any) -> int:
    """SQL SUM is NUMERIC (Decimal) on PostgreSQL and int on SQLite; both are exact."""
    return int(v or 0)


# --- the day's trades ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DayTrades:
    trade_count: int
    volume_kg: int
    turnover: int            # Σ notional, minor units
    price_qty: int           # Σ price × qty_kg
    open: int | None
    high: int | None
    low: int | None
    last: int | None
    vwap: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"trade_count": self.trade_count, "volume_kg": self.volume_kg, "turnover": self.turnover,
                "sum_price_qty": self.price_qty, "open": self.open, "high": self.high, "low": self.low,
                "last": self.last, "vwap": self.vwap}


def day_trades(session: Session, instrument_id: int, day: dt.date) -> DayTrades:
    start, end = day_window(day)
    where = (Trade.instrument_id == instrument_id, Trade.executed_at >= start, Trade.executed_at < end)
    row = session.execute(select(
        func.count(Trade.id), func.sum(Trade.qty_kg), func.sum(Trade.notional),
        func.sum(Trade.price * Trade.qty_kg), func.max(Trade.price), func.min(Trade.price)).where(*where)).one()
    count, volume, turnover, price_qty = int(row[0] or 0), _int(row[1]), _int(row[2]), _int(row[3])
    if count == 0:
        return DayTrades(0, 0, 0, 0, None, None, None, None, None)
    first = session.scalar(select(Trade.price).where(*where)
                           .order_by(Trade.executed_at, Trade.engine_seq).limit(1))
    last = session.scalar(select(Trade.price).where(*where)
                          .order_by(Trade.executed_at.desc(), Trade.engine_seq.desc()).limit(1))
    return DayTrades(count, volume, turnover, price_qty, first, int(row[4]), int(row[5]), last,
                     div_half_up(price_qty, volume))


# --- blend weights ---------------------------------------------------------------------------------

def validate_weights(weights: Any) -> dict[str, int]:
    """Integer basis points >= 0 adding up to 10,000, keys "vwap" (> 0) and index codes."""
    if not isinstance(weights, dict) or not weights:
        raise InvalidInput("weights must be an object of basis points", field="weights")
    out: dict[str, int] = {}
    for key, w in weights.items():
        code = key if key == VWAP else str(key).upper()
        if code != VWAP and code not in INDEX_CODES:
            raise InvalidInput(f"weight keys are {VWAP!r} and {INDEX_CODES}, not {key!r}", field="weights")
        if not isinstance(w, int) or isinstance(w, bool) or w < 0:
            raise InvalidInput(f"weight of {code} must be an integer >= 0 (basis points)", field="weights")
        if code in out:
            raise InvalidInput(f"weight of {code} given twice", field="weights")
        out[code] = w
    if out.get(VWAP, 0) <= 0:
        raise InvalidInput("the blend must give the market's own VWAP a weight > 0", field="weights")
    if sum(out.values()) != FULL_WEIGHT:
        raise InvalidInput(f"weights must add up to {FULL_WEIGHT} basis points, not {sum(out.values())}",
                           field="weights")
    return out


def latest_index(session: Session, code: str, day: dt.date) -> ExternalIndex | None:
    return session.scalar(select(ExternalIndex).where(ExternalIndex.code == code, ExternalIndex.trading_day <= day)
                          .order_by(ExternalIndex.trading_day.desc()).limit(1))


# --- closing a day ---------------------------------------------------------------------------------

def _existing(session: Session, instrument_id: int, day: dt.date) -> ReferencePrice | None:
    return session.scalar(select(ReferencePrice).where(ReferencePrice.instrument_id == instrument_id,
                                                       ReferencePrice.trading_day == day))


def close_day(session: Session, instrument_id: int, day: dt.date, *, actor: Actor | None = None) -> ReferencePrice:
    """Compute and publish the reference price of `instrument_id` for China trading day `day`, and
    queue the next day's band for the sequencer. Idempotent: a day already closed returns its row.
    Raises Conflict for a delisted instrument, a day before the last closed one, invalid stored
    weights, or a weighted external index with no value on or before `day`. The caller commits."""
    inst = get_instrument(session, instrument_id, lock=True)
    existing = _existing(session, inst.id, day)
    if existing is not None:
        return existing
    if inst.status is InstrumentStatus.DELISTED:
        raise Conflict(f"{inst.symbol} is delisted", field="instrument", code="instrument_not_active")
    later = session.scalar(select(func.max(ReferencePrice.trading_day)).where(
        ReferencePrice.instrument_id == inst.id))
    if later is not None and later > day:
        raise Conflict(f"{inst.symbol} is already closed for {later}; {day} cannot be published after it",
                       field="day", code="day_out_of_order")
    previous = inst.reference_price

    trades = day_trades(session, inst.id, day)
    if trades.vwap is not None:
        close, close_method = trades.vwap, "vwap"
    else:
        close, close_method = previous, "carried_forward"

    tick = inst.tick_size
    inputs: dict[str, Any] = {"trading_day": day.isoformat(), "window_utc": [t.isoformat() + "Z" for t in day_window(day)],
                              "trades": trades.as_dict(), "previous_reference": previous,
                              "close": close, "close_method": close_method, "tick_size": tick}
    if trades.vwap is not None:
        inputs["close_formula"] = "close = round_half_up(Σ price×qty_kg / Σ qty_kg)"
    else:
        inputs["close_formula"] = "close = previous reference (no trade)"

    if inst.blend_weights:
        try:
            weights = validate_weights(inst.blend_weights)
        except InvalidInput as e:
            raise Conflict(f"{inst.symbol} has invalid blend weights: {e.message}", field="blend_weights",
                           code="invalid_blend") from None
        numerator = close * weights[VWAP]
        components: list[dict[str, Any]] = [{"code": VWAP, "price": close, "weight": weights[VWAP]}]
        terms = [f"{weights[VWAP]}×close"]
        indices: dict[str, Any] = {}
        for code in sorted(c for c in weights if c != VWAP):
            w = weights[code]
            idx = latest_index(session, code, day)
            if idx is None:
                if w == 0:
                    indices[code] = {"price": None, "day": None, "source": None, "weight": 0}
                    continue
                raise Conflict(f"no {code} index on or before {day}: enter it before closing {inst.symbol} "
                               f"(its blend weights {code} {w} bp)", field=code, code="external_index_missing")
            indices[code] = {"price": idx.price, "day": idx.trading_day.isoformat(), "source": idx.source,
                             "weight": w, "entered_at": idx.entered_at.isoformat() + "Z"}
            components.append({"code": code, "price": idx.price, "weight": w})
            numerator += idx.price * w
            terms.append(f"{w}×{code}")
        reference = to_tick(numerator, FULL_WEIGHT, tick)
        method = "blend"
        inputs |= {"weights": weights, "indices": indices, "components": components,
                   "blend_numerator": numerator,
                   "formula": f"reference = round_half_up(({' + '.join(terms)}) / 10000 / tick) × tick"}
    else:
        reference = to_tick(close, 1, tick)
        method = close_method
        inputs["formula"] = "reference = round_half_up(close / tick) × tick"

    low, high = band_around(reference, inst.band_bp, tick)
    inputs["band"] = {"band_bp": inst.band_bp, "low": low, "high": high,
                      "formula": "low = ceil(ref×(1−bp)/tick)×tick, high = floor(ref×(1+bp)/tick)×tick"}

    row = ReferencePrice(instrument_id=inst.id, trading_day=day, open=trades.open, high=trades.high,
                         low=trades.low, vwap=trades.vwap, close=close, volume_kg=trades.volume_kg,
                         turnover=trades.turnover, trade_count=trades.trade_count, previous_reference=previous,
                         method=method, inputs=inputs, reference_price=reference, band_low=low, band_high=high,
                         computed_at=utcnow())
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        raise Conflict(f"{inst.symbol} was closed for {day} concurrently", field="day", code="duplicate") from None
    inst.reference_price = reference
    cmd = OrderCommand(instrument_id=inst.id, order_id=None, kind="set_band",
                       args={"low": low, "high": high, "day": day.isoformat()},
                       status=CommandStatus.PENDING, created_at=utcnow())
    session.add(cmd)
    session.flush()
    audit.record(session, actor, "reference.published", "instrument", inst.id,
                 {"symbol": inst.symbol, "trading_day": day.isoformat(), "method": method,
                  "reference_price": reference, "previous_reference": previous, "close": close,
                  "vwap": trades.vwap, "volume_kg": trades.volume_kg, "trade_count": trades.trade_count,
                  "band": [low, high], "weights": inputs.get("weights"),
                  "indices": {c: v["price"] for c, v in inputs.get("indices", {}).items()},
                  "reference_price_id": row.id, "set_band_seq": cmd.id})
    return row


@dataclass(frozen=True, slots=True)
class CloseResult:
    instrument_id: int
    symbol: str
    day: dt.date
    ok: bool
    reference_price: int | None = None
    band: tuple[int, int] | None = None
    method: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"instrument_id": self.instrument_id, "symbol": self.symbol, "trading_day": self.day.isoformat(),
                "ok": self.ok, "reference_price": self.reference_price,
                "band": list(self.band) if self.band else None, "method": self.method, "error": self.error}


def days_to_close(session: Session, inst: Instrument, day: dt.date, catch_up_days: int) -> list[dt.date]:
    """`day`, preceded by the days missed since the instrument's last close (or its listing day),
    at most `catch_up_days` of them: a scheduler that was down does not leave holes in the history."""
    if catch_up_days <= 0:
        return [day]
    last = session.scalar(select(func.max(ReferencePrice.trading_day)).where(ReferencePrice.instrument_id == inst.id))
    start = last + dt.timedelta(days=1) if last is not None else china_date(inst.created_at)
    first = max(start, day - dt.timedelta(days=catch_up_days))
    if first >= day:
        return [day]
    return [first + dt.timedelta(days=i) for i in range((day - first).days + 1)]


def close_all(session_factory: sessionmaker[Session], day: dt.date, *, actor: Actor | None = None,
              catch_up_days: int = 0) -> list[CloseResult]:
    """Close `day` for every active or halted instrument, each day in its own transaction, one
    result per instrument and day. With `catch_up_days`, days missed since an instrument's last close
    are closed first, in order. A failure (e.g. a missing external index) is logged and reported;
    that instrument's later days wait, the other instruments still close."""
    with session_factory() as s:
        insts = list(s.scalars(select(Instrument).where(
            Instrument.status.in_([InstrumentStatus.ACTIVE, InstrumentStatus.HALTED])).order_by(Instrument.id)))
        plan = [(i.id, i.symbol, days_to_close(s, i, day, catch_up_days)) for i in insts]
    results: list[CloseResult] = []
    for inst_id, symbol, days in plan:
        for d in days:
            try:
                with session_factory() as s, s.begin():
                    row = close_day(s, inst_id, d, actor=actor)
                    res = CloseResult(inst_id, symbol, d, True, row.reference_price, (row.band_low, row.band_high),
                                      row.method)
            except RegistryError as e:
                log.error("reference price of %s for %s not published: %s", symbol, d, e.message)
                res = CloseResult(inst_id, symbol, d, False, error=f"{e.code}: {e.message}")
            except Exception as e:   # one instrument's failure must not stop the others
                log.exception("reference price of %s for %s failed", symbol, d)
                res = CloseResult(inst_id, symbol, d, False, error=f"error: {e}")
            results.append(res)
            if not res.ok:
                break
    return results


# --- operator inputs -------------------------------------------------------------------------------

def set_external_index(session: Session, actor: Actor, code: str, day: dt.date, price: int,
                       source: str) -> ExternalIndex:
    """Operator enters an external index value (minor units per tonne) for a day, with its source.
    One value per code and day; a correction is a new day's value (history is not rewritten)."""
    actor.require_kind(HolderKind.OPERATOR)
    code = (code or "").strip().upper()
    if code not in INDEX_CODES:
        raise InvalidInput(f"code must be one of {INDEX_CODES}", field="code")
    if not isinstance(day, dt.date) or isinstance(day, dt.datetime):
        raise InvalidInput("day must be a date", field="day")
    if not isinstance(price, int) or isinstance(price, bool) or price <= 0:
        raise InvalidInput("price must be a positive integer (minor units per tonne)", field="price")
    source = (source or "").strip()
    if not source:
        raise InvalidInput("a source is required (e.g. the exchange's daily report)", field="source")
    if len(source) > 200:
        raise InvalidInput("source is at most 200 characters", field="source")
    if session.scalar(select(ExternalIndex.id).where(ExternalIndex.code == code, ExternalIndex.trading_day == day)):
        raise Conflict(f"{code} for {day} is already entered", field="day", code="duplicate")
    idx = ExternalIndex(code=code, trading_day=day, price=price, source=source, entered_by_id=actor.user_id,
                        entered_at=utcnow())
    try:
        with session.begin_nested():
            session.add(idx)
            session.flush()
    except IntegrityError:
        raise Conflict(f"{code} for {day} is already entered", field="day", code="duplicate") from None
    audit.record(session, actor, "external_index.entered", "external_index", idx.id,
                 {"code": code, "trading_day": day.isoformat(), "price": price, "source": source})
    return idx


def set_blend(session: Session, actor: Actor, instrument_id: int | str,
              weights: dict[str, int] | None) -> Instrument:
    """Operator publishes (or, with None, removes) an instrument's blend weights. They apply from
    the next close; each ReferencePrice stores the weights it used."""
    actor.require_kind(HolderKind.OPERATOR)
    clean = validate_weights(weights) if weights is not None else None
    inst = get_instrument(session, instrument_id, lock=True)
    before = inst.blend_weights
    inst.blend_weights = clean
    audit.record(session, actor, "instrument.blend_set", "instrument", inst.id,
                 {"symbol": inst.symbol, "from": before, "to": clean})
    return inst


def external_indices(session: Session, code: str | None = None, limit: int = 90) -> list[dict[str, Any]]:
    """The entered external index values, newest first (shown next to the reference price)."""
    stmt = select(ExternalIndex).order_by(ExternalIndex.trading_day.desc(), ExternalIndex.code).limit(limit)
    if code:
        stmt = stmt.where(ExternalIndex.code == code.upper())
    return [{"code": i.code, "trading_day": i.trading_day.isoformat(), "price": i.price, "source": i.source,
             "entered_by_id": i.entered_by_id, "entered_at": i.entered_at.isoformat() + "Z"}
            for i in session.scalars(stmt)]
