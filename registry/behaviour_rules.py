"""Behaviour types, the configurable rules, and the per-row checks done in Python before the database.

A row (a dict of text or JSON values) becomes a `Row`: parsed, checked for its own validity (fields,
type allowed for the partner, claim window, plausibility) and computed (reduction in grams through the
methodology calculators, points for engagement actions). The checks that need the database (user,
duplicate, daily cap, another channel) are done per chunk in SQL by `registry.behaviour`.

Calculations are exact and are the calculators' own (`registry.calculators.calculate`); they are
memoised per distinct activity (type, mode or category, quantity text, region, year) for the run,
because a calculator is a pure function of its activity and the factor snapshot taken at the start.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from registry.behaviour_fast import CLAIMED_ELSEWHERE, DUPLICATE, OVER_CAP, UNKNOWN_USER
from registry.behaviour_impl import fast
from registry.errors import InvalidInput, NotFound
from registry.factors import FactorSource

if TYPE_CHECKING:
    from registry.behaviour_fast import Row
else:
    # The compiled class when the build serves (`registry.behaviour_impl`): the importer's loops read
    # its fields directly.
    Row = fast("Row")

# code → "reduction" (a methodology calculator; earns points by grams) or "engagement" (fixed points)
BEHAVIOUR_TYPES: dict[str, str] = {
    "CI-TRANSIT": "reduction",
    "CI-BIKE": "reduction",
    "CI-WASTE": "reduction",
    "CI-NEV": "reduction",
    "CI-HOME": "reduction",
    "ENG-CHECKIN": "engagement",
    "ENG-QUIZ": "engagement",
}
_TRAVEL = ("CI-TRANSIT", "CI-BIKE", "CI-NEV")

# Reasons a row is rejected; stable codes kept on the row (those decided with the database's answers
# are defined beside the classifier, `registry.behaviour_fast`).
INVALID = "invalid"
TYPE_NOT_ALLOWED = "type_not_allowed"
OUTSIDE_WINDOW = "outside_claim_window"
IMPLAUSIBLE = "implausible"
REASONS = (INVALID, TYPE_NOT_ALLOWED, UNKNOWN_USER, DUPLICATE, OUTSIDE_WINDOW, IMPLAUSIBLE, OVER_CAP,
           CLAIMED_ELSEWHERE)


def _caps() -> dict[str, int]:
    return {"CI-TRANSIT": 10, "CI-BIKE": 10, "CI-WASTE": 3, "CI-NEV": 5, "CI-HOME": 3,
            "ENG-CHECKIN": 1, "ENG-QUIZ": 3}


@dataclass(frozen=True)
class Rules:
    """The programme's configuration (Flask `BEHAVIOUR_RULES` overrides any field).

    Points: a member earns floor(G / grams_per_point) points in total for G grams of accepted
    reductions; each row earns the increase of that floor, so the remainder (G mod grams_per_point)
    carries to the member's next row and is never lost nor paid twice. Engagement actions earn
    `engagement_points` each and no reduction. Earned points expire at the end of the year
    `expiry_years` after the year they were earned (1: the end of the following year).
    A day (for the caps) is the calendar day at UTC+`day_utc_offset_h` (China time by default).
    Plausibility: a trip longer than `max_km` or faster on average than `max_kmh` (by mode for
    transit, else by type), a waste drop-off heavier than `max_waste_kg`, or anything lasting more
    than `max_duration_h` hours, is implausible."""

    grams_per_point: int = 10
    claim_window_days: int = 30
    future_skew_s: int = 300
    day_utc_offset_h: int = 8
    expiry_years: int = 1
    daily_caps: Mapping[str, int] = field(default_factory=_caps)
    engagement_points: Mapping[str, int] = field(
        default_factory=lambda: {"ENG-CHECKIN": 5, "ENG-QUIZ": 10})
    max_km: Mapping[str, int] = field(
        default_factory=lambda: {"bus": 100, "metro": 100, "CI-BIKE": 50, "CI-NEV": 1000})
    max_kmh: Mapping[str, int] = field(
        default_factory=lambda: {"bus": 80, "metro": 120, "CI-BIKE": 30, "CI-NEV": 150})
    max_waste_kg: int = 50
    max_duration_h: int = 24

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> Rules:
        if not m:
            return cls()
        names = {f.name for f in fields(cls)}
        unknown = set(m) - names
        if unknown:
            raise InvalidInput(f"unknown behaviour rule(s): {', '.join(sorted(unknown))}", field="rules")
        rules = replace(cls(), **dict(m))
        if rules.grams_per_point < 1:
            raise InvalidInput("grams_per_point must be at least 1", field="grams_per_point")
        return rules

    def cap(self, code: str) -> int:
        return int(self.daily_caps.get(code, 0)) or 1_000_000

    def expires_on(self, earned_at: dt.datetime) -> dt.date:
        return dt.date(earned_at.year + self.expiry_years, 12, 31)


# Collection thresholds while an import runs (`fewer_collections`): the cyclic garbage collector's
# youngest generation is collected after 100,000 allocations instead of 700, the older ones rarely.
_IMPORT_THRESHOLDS = (100_000, 50, 1000)


class _Quiet:
    lock = threading.Lock()
    depth = 0                                         # imports running in this process
    saved: tuple[int, ...] = (700, 10, 10)            # the thresholds before the first of them


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run an import with far fewer automatic garbage collections. Its chunks hold tens of thousands
    of live rows and the member memo hundreds of thousands of entries, none of them garbage, which
    every collection walks again: with the default thresholds collections took about a quarter of
    the importing process's CPU (2.2 of 8.2 s for 300,000 rows, 1,881 young and 5 full ones).
    Garbage is still collected, less often; the thresholds are the process's, so they are set
    while any import runs and restored when the last one ends."""
    with _Quiet.lock:
        if _Quiet.depth == 0:
            _Quiet.saved = gc.get_threshold()
            gc.set_threshold(*_IMPORT_THRESHOLDS)
        _Quiet.depth += 1
    try:
        yield
    finally:
        with _Quiet.lock:
            _Quiet.depth -= 1
            if _Quiet.depth == 0:
                gc.set_threshold(*_Quiet.saved)


def _text(raw: Mapping[str, Any], name: str) -> str | None:
    v = raw.get(name)
    if v is None or v == "":
        return None
    v = (v if type(v) is str else str(v)).strip()
    return v or None


_OFFSETS: dict[str, dt.timedelta] = {}   # "+08:00" -> 8 h: the UTC offsets met so far


def _when(raw: Mapping[str, Any], name: str) -> dt.datetime:
    v = raw.get(name)
    if not isinstance(v, str) or not v:
        raise InvalidInput(f"{name} is required (ISO 8601)", field=name)
    # A date and time ending in an offset met before (most rows of a feed): the naive part less the
    # offset, the time `astimezone(UTC)` gives at a third of its cost (a million rows a run). What the
    # naive part alone does not parse goes to the full parser, which decides as it always has.
    offset = _OFFSETS.get(v[-6:])
    if offset is not None and v[10:11] in ("T", " "):
        try:
            naive = dt.datetime.fromisoformat(v[:-6])
        except ValueError:
            pass
        else:
            if naive.tzinfo is None:   # "…:00.-12+08:00": the naive part parsed with an offset of its own
                return naive - offset
    try:
        t = dt.datetime.fromisoformat(v)
    except ValueError:
        raise InvalidInput(f"{name} is not an ISO 8601 time: {v[:40]!r}", field=name) from None
    if t.tzinfo is None:
        return t   # times without an offset are taken as UTC; every stored time is naive UTC
    if len(v) > 16 and v[-6] in "+-" and v[-3] == ":" and v[-5:-3].isdigit() and v[-2:].isdigit():
        _OFFSETS[v[-6:]] = t.utcoffset() or dt.timedelta(0)
    return t.astimezone(dt.UTC).replace(tzinfo=None)


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail


class RowPreparer:
    """Parses and checks rows for one partner and one receipt time; computes their reductions."""

    def __init__(self, rules: Rules, *, region: str, allowed: frozenset[str], received_at: dt.datetime,
                 factors: FactorSource) -> None:
        self.rules, self.region, self.allowed, self.factors = rules, region, allowed, factors
        self.earliest = received_at - dt.timedelta(days=rules.claim_window_days)
        self.latest = received_at + dt.timedelta(seconds=rules.future_skew_s)
        self.day_offset = dt.timedelta(hours=rules.day_utc_offset_h)
        self.longest = dt.timedelta(hours=rules.max_duration_h)
        self._calc: dict[tuple[Any, ...], tuple[int, str] | _Invalid] = {}
        self._qty: dict[str, tuple[int, int] | None] = {}

    def prepare(self, line_no: int, raw: Mapping[str, Any]) -> Row:
        row = Row(line_no)
        event_id = _text(raw, "event_id")
        if event_id is None or len(event_id) > 64:
            return row.reject(INVALID, "event_id is required (1-64 characters)")
        row.event_id = event_id
        user_ref, user_id = _text(raw, "user"), _text(raw, "user_id")
        if user_ref is not None:
            if len(user_ref) > 64:
                return row.reject(INVALID, "user is at most 64 characters")
            row.user_ref = user_ref
        elif user_id is not None and user_id.isascii() and user_id.isdigit() and len(user_id) < 18:
            row.user_id = int(user_id)
        else:
            return row.reject(INVALID, "user (the partner's id) or user_id (a registry user id) is required")
        code = _text(raw, "type")
        if code is None or code not in BEHAVIOUR_TYPES:
            return row.reject(INVALID, f"type {code!r} is not a behaviour type")
        row.code = code
        if code not in self.allowed:
            return row.reject(TYPE_NOT_ALLOWED, f"this partner may not report {code}")
        try:
            self._times(row, raw)
            self._compute(row, raw)
        except InvalidInput as e:
            return row.reject(INVALID, e.message)
        except _Invalid as e:
            return row.reject(e.reason, e.detail)
        return row

    def _times(self, row: Row, raw: Mapping[str, Any]) -> None:
        start = _when(raw, "started_at")
        end = _when(raw, "ended_at") if raw.get("ended_at") not in (None, "") else start
        if end < start:
            raise InvalidInput("ended_at is before started_at", field="ended_at")
        row.started_at, row.ended_at = start, end
        row.day = (start + self.day_offset).date()
        if end - start > self.longest:
            raise _Invalid(IMPLAUSIBLE, f"lasted more than {self.rules.max_duration_h} h")
        if end < self.earliest or end > self.latest:
            raise _Invalid(OUTSIDE_WINDOW, f"ended {end.isoformat()}Z, outside the claim window "
                                           f"{self.earliest.isoformat()}Z - {self.latest.isoformat()}Z")

    def _number(self, text: str | None, name: str) -> tuple[int, int]:
        """The exact value of a quantity's text as (numerator, denominator), memoised per text, so that
        the plausibility checks compare integers."""
        if text is None:
            raise InvalidInput(f"{name} is required", field=name)
        if text in self._qty:
            value = self._qty[text]
        else:
            try:
                d = Decimal(text)
                f = Fraction(d) if d.is_finite() and d >= 0 else None
            except InvalidOperation:
                f = None
            value = self._qty[text] = (f.numerator, f.denominator) if f is not None else None
        if value is None:
            raise InvalidInput(f"{name} is not a non-negative number: {text[:20]!r}", field=name)
        return value

    def _compute(self, row: Row, raw: Mapping[str, Any]) -> None:
        code = row.code
        assert code is not None and row.started_at is not None and row.ended_at is not None
        if BEHAVIOUR_TYPES[code] == "engagement":
            row.points = int(self.rules.engagement_points.get(code, 0))
            return
        rules = self.rules
        extra = raw.get("activity")
        if extra is not None and not isinstance(extra, Mapping):
            raise InvalidInput("activity must be an object", field="activity")
        if code in _TRAVEL:
            text = _text(raw, "distance_km")
            num, den = self._number(text, "distance_km")   # km = num / den, exactly
            mode = _text(raw, "mode") if code == "CI-TRANSIT" else None
            limit_key = mode if mode is not None else code
            seconds = int((row.ended_at - row.started_at).total_seconds())
            max_km, max_kmh = rules.max_km.get(limit_key), rules.max_kmh.get(limit_key)
            if max_km is not None and num > max_km * den:
                raise _Invalid(IMPLAUSIBLE, f"{text} km is longer than {max_km} km")
            if max_kmh is not None and num > 0:
                if seconds <= 0:
                    raise _Invalid(IMPLAUSIBLE, f"{text} km in no time")
                if num * 3600 > max_kmh * seconds * den:
                    raise _Invalid(IMPLAUSIBLE, f"{text} km in {seconds} s is faster than {max_kmh} km/h")
            row.variant, row.quantity = mode, text
        elif code == "CI-WASTE":
            text = _text(raw, "weight_kg")
            num, den = self._number(text, "weight_kg")
            if num > rules.max_waste_kg * den:
                raise _Invalid(IMPLAUSIBLE, f"{text} kg in one drop-off is more than {rules.max_waste_kg} kg")
            row.variant, row.quantity = _text(raw, "category"), text
        key = (code, row.variant, row.quantity, row.started_at.year,
               json.dumps(extra, sort_keys=True, default=str) if extra else None)
        result = self._calc.get(key)
        if result is None:
            result = self._calc[key] = self._calculate(code, row, extra)
        if isinstance(result, _Invalid):
            raise _Invalid(result.reason, result.detail)
        row.reduction_g, row.factors = result

    def _calculate(self, code: str, row: Row, extra: Mapping[str, Any] | None) -> tuple[int, str] | _Invalid:
        from registry import calculators

        assert row.started_at is not None
        activity: dict[str, Any] = dict(extra or {})
        activity.update(region=self.region, year=row.started_at.year)
        if code in _TRAVEL:
            activity["distance_km"] = row.quantity
            if code == "CI-TRANSIT":
                activity["mode"] = row.variant
        elif code == "CI-WASTE":
            activity["items"] = [{"category": row.variant, "weight_kg": row.quantity}]
        try:
            calc = calculators.calculate(code, activity, self.factors)
        except InvalidInput as e:
            return _Invalid(INVALID, e.message)
        except NotFound as e:
            return _Invalid(INVALID, f"cannot compute: {e.message}")
        cited = ";".join(f"{f['key']}/{f['region']}/{f['year']}" for f in calc.factors)
        return calc.reduction_g, cited[:200]
