"""The behaviour import's hot loops, compiled with mypyc when built (`registry.build`).

`ChunkPacker` (the preparing process) and, in the importer, `pack_events` (the decided rows' COPY
bytes for `behaviour_events`).

The preparing process's quick path: a CSV record straight to the columns of a packed chunk.

`RowPreparer.prepare` then `Packer.pack` build a `Row` from a dict per record, parse the times into
datetimes and pack them; ~20 µs a row. Most rows of a feed are ordinary: a time like
``2026-11-24T13:45:12+08:00`` (the hour and the offset met before), a type allowed, a quantity and
an activity already computed, nothing to reject. `ChunkPacker` recognises those from the record's
text, computes with integer microseconds, and packs them directly, reading the preparer's own memos
(the quantities' exact values, the calculations). Any record it does not recognise as such, and
every record that would be rejected, goes the long way (`prepare` + `pack`), so each row's outcome,
reason and detail are the preparer's by construction; the tests compare the two paths row by row.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # imported at run time by `ChunkPacker` (`behaviour_rules` imports this module)
    from registry.behaviour_rules import RowPreparer

# The SHA-256 of this source file in its build (`registry.build` writes it there): a build of an
# older source is not used (`registry.behaviour_impl`).
SOURCE_SHA256 = ""

_LEN = struct.Struct(">i")
_INT4 = struct.Struct(">ii")
_IDENT = struct.Struct(">iii")   # line number (int4), then the event id's length
_INT8 = struct.Struct(">iq")
_TS2 = struct.Struct(">iqiq")
_NULL = struct.pack(">i", -1)
_EPOCH = dt.datetime(2000, 1, 1)
_EPOCH_DAY = _EPOCH.date()
_US = dt.timedelta(microseconds=1)
_DAY_US = 86_400_000_000
_TWO = {f"{i:02d}": i * 1_000_000 for i in range(60)}   # "00".."59": seconds (or minutes / 60) in µs
_HOUR_US = 3_600_000_000


# The reasons decided with the database's answers (`Classifier`); `registry.behaviour_rules` holds the
# others and re-exports these.
UNKNOWN_USER = "unknown_user"
DUPLICATE = "duplicate"
OVER_CAP = "over_daily_cap"
CLAIMED_ELSEWHERE = "claimed_elsewhere"


class Row:
    """One row on its way in. `status` None means it passed the Python checks so far.

    Defined here so that, built, it is a compiled class: the importer's loops over a chunk's rows
    (`Classifier`, `pack_stage`, `pack_events`, `count_chunk`, `rows_of`) then read and write its
    fields directly instead of through generic attribute lookups. `registry.behaviour_rules.Row` is
    the build's class when there is one (`registry.behaviour_impl`), else this source's."""

    line_no: int
    event_id: str
    user_ref: str | None
    user_id: int | None
    code: str | None
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    day: dt.date | None
    variant: str | None
    quantity: str | None
    reduction_g: int
    points: int
    factors: str | None
    status: str | None
    reason: str | None
    detail: str | None
    # The row's fields that do not depend on the database, already in PostgreSQL's binary COPY
    # format, when a preparing process made them (`registry.behaviour_prepare`).
    packed_event: bytes | None
    packed_stage: bytes | None
    # The import's memo's entry for the row's member ([user id, record, settled record], the very
    # list: see `registry.behaviour.MemberMemo`) when the row was staged, None if it knew none.
    member: list[int] | None

    def __init__(self, line_no: int) -> None:
        self.line_no = line_no
        self.event_id = ""
        self.user_ref = None
        self.user_id = None
        self.code = None
        self.started_at = None
        self.ended_at = None
        self.day = None
        self.variant = None
        self.quantity = None
        self.reduction_g = 0
        self.points = 0
        self.factors = None
        self.status = None
        self.reason = None
        self.detail = None
        self.packed_event = None
        self.packed_stage = None
        self.member = None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Compact and quick to load: the prepared rows of a CSV file come from a child process
        # (`registry.behaviour_prepare`) a chunk at a time. Not the packed fields (None after).
        return row_of, ((self.line_no, self.event_id, self.user_ref, self.user_id, self.code, self.started_at,
                         self.ended_at, self.day, self.variant, self.quantity, self.reduction_g, self.points,
                         self.factors, self.status, self.reason, self.detail),)

    def reject(self, reason: str, detail: str) -> Row:
        self.status, self.reason, self.detail = "rejected", reason, detail[:300]
        return self


def row_of(state: tuple[Any, ...]) -> Row:
    """The row `Row.__reduce__` pickled."""
    r = Row(state[0])
    (r.event_id, r.user_ref, r.user_id, r.code, r.started_at, r.ended_at, r.day, r.variant, r.quantity,
     r.reduction_g, r.points, r.factors, r.status, r.reason, r.detail) = state[1:]
    return r


class _Activity:
    """A distinct activity's packed code and tail (variant, quantity, factors), grams, points, and
    the exact quantity with the speed limit still to check against each row's duration."""

    __slots__ = ("code", "tail", "reduction_g", "points", "num", "den", "max_kmh")

    def __init__(self, code: bytes, tail: bytes, reduction_g: int, points: int, num: int, den: int,
                 max_kmh: int | None) -> None:
        self.code, self.tail, self.reduction_g, self.points = code, tail, reduction_g, points
        self.num, self.den, self.max_kmh = num, den, max_kmh


_NO_COLUMNS = (-1, -1)


def _us(t: dt.datetime) -> int:
    return (t - _EPOCH) // _US


class ChunkPacker:
    """Prepares and packs the records of a CSV file with the header `names`, as the columns
    `registry.behaviour_prepare` sends (see `pack_chunk`)."""

    def __init__(self, preparer: RowPreparer, packer: Any, names: list[str]) -> None:
        from registry import behaviour_rules

        self.preparer, self.packer, self.names = preparer, packer, names
        self.types: dict[str, str] = behaviour_rules.BEHAVIOUR_TYPES
        self.invalid: Any = behaviour_rules._Invalid
        self.width = len(names)
        at = {n: i for i, n in enumerate(names)}   # the last of a repeated name, as dict(zip(...)) keeps
        self.at = at
        # The quick path reads only these columns; a file with an `activity` column goes the long way.
        self.quick = "activity" not in at and "event_id" in at and "type" in at and "started_at" in at
        self.i_event, self.i_type, self.i_start = at.get("event_id", -1), at.get("type", -1), at.get("started_at", -1)
        self.i_end, self.i_user, self.i_uid = at.get("ended_at", -1), at.get("user", -1), at.get("user_id", -1)
        rules = preparer.rules
        self.allowed = frozenset(c for c in preparer.allowed if c in self.types)
        self.earliest, self.latest = _us(preparer.earliest), _us(preparer.latest)
        self.day_offset = rules.day_utc_offset_h * 3_600_000_000
        self.longest = rules.max_duration_h * 3_600_000_000
        self.hours: dict[str, int] = {}              # "2026-11-24T13" -> µs of that hour (naive)
        self.years: dict[int, int] = {}              # hours since 2000-01-01 UTC -> the year (UTC)
        self.offsets: dict[str, int] = {}            # "+08:00" -> µs
        self.days: dict[int, tuple[dt.date, bytes, int, bytes]] = {}
        self.dates: dict[dt.date, dt.date] = {}
        self.texts: dict[str, bytes] = {}
        self.activities: dict[tuple[str, str, str, int], _Activity] = {}
        self.stage_head: bytes = packer.stage_head
        # The columns of each type's activity: mode or category, then the quantity.
        i_mode, i_km, i_cat, i_kg = at.get("mode", -1), at.get("distance_km", -1), at.get("category", -1), \
            at.get("weight_kg", -1)
        self.columns: dict[str, tuple[int, int]] = {"CI-TRANSIT": (i_mode, i_km), "CI-BIKE": (-1, i_km),
                                                    "CI-NEV": (-1, i_km), "CI-WASTE": (i_cat, i_kg)}

    # -- times ---------------------------------------------------------------------------------------
    def _hour(self, v: str) -> int | None:
        key = v[:13]
        got = self.hours.get(key)
        if got is None:
            if not (key[4:5] == "-" and key[7:8] == "-" and key[10:11] == "T" and key.isascii()):
                return None
            try:
                t = dt.datetime.fromisoformat(key + ":00:00")
            except ValueError:
                return None
            got = self.hours[key] = _us(t)
        return got

    def _offset(self, key: str) -> int | None:
        off = self.offsets.get(key)
        if off is None:
            if not (len(key) == 6 and key[0] in "+-" and key[3] == ":" and key.isascii()
                    and key[1:3].isdigit() and key[4:].isdigit()):
                return None
            try:
                t = dt.datetime.fromisoformat("2000-01-01T00:00:00" + key)
            except ValueError:
                return None
            delta = t.utcoffset()
            if delta is None:
                return None
            off = self.offsets[key] = delta // _US
        return off

    def _when(self, v: str) -> int | None:
        """µs since 2000-01-01 UTC of `YYYY-MM-DDTHH:MM:SS±HH:MM`, with or without 3 or 6 digits of
        a second (as `behaviour_rules._when` reads it), else None."""
        n = len(v)
        if n == 25:
            fraction, key = 0, v[19:]
        elif n == 32 or n == 29:
            digits = v[20:n - 6]
            if v[19] != "." or not (digits.isascii() and digits.isdigit()):
                return None
            fraction, key = int(digits) * (1 if n == 32 else 1000), v[n - 6:]
        else:
            return None
        if v[13] != ":" or v[16] != ":":
            return None
        hour = self.hours.get(v[:13])
        if hour is None:
            hour = self._hour(v)
            if hour is None:
                return None
        minute, second = _TWO.get(v[14:16]), _TWO.get(v[17:19])
        if minute is None or second is None:
            return None
        off = self.offsets.get(key)
        if off is None:
            off = self._offset(key)
            if off is None:
                return None
        return hour + minute * 60 + second + fraction - off

    def _year(self, us: int) -> int:
        hour = us // _HOUR_US
        year = self.years.get(hour)
        if year is None:
            year = self.years[hour] = (_EPOCH + dt.timedelta(microseconds=us)).year
        return year

    # -- packing -------------------------------------------------------------------------------------
    def _text(self, v: str) -> bytes:
        b = self.texts.get(v)
        if b is None:
            raw = v.encode()
            b = self.texts[v] = _LEN.pack(len(raw)) + raw
        return b

    def _day(self, index: int) -> tuple[dt.date, bytes, int, bytes]:
        got = self.days.get(index)
        if got is None:
            day = _EPOCH_DAY + dt.timedelta(days=index)
            day = self.dates.setdefault(day, day)
            lo = index * _DAY_US - self.day_offset
            hi = lo + _DAY_US
            got = self.days[index] = (day, _INT4.pack(4, index), hi, _TS2.pack(8, lo, 8, hi))
        return got

    def _activity(self, code: str, a: str, b: str, year: int) -> _Activity | None:
        """What the row's activity contributes (`RowPreparer._compute` of code, mode or category `a`,
        quantity `b`, year), if the preparer's memos already hold it and no check fails, else None."""
        prep, rules = self.preparer, self.preparer.rules
        variant: str | None = None
        quantity: str | None = None
        num = den = 0
        max_kmh: int | None = None
        reduction_g, points, factors = 0, 0, None
        if self.types[code] == "engagement":
            points = int(rules.engagement_points.get(code, 0))
        else:
            if code == "CI-TRANSIT" or code == "CI-BIKE" or code == "CI-NEV":
                quantity = b.strip()
                value = prep._qty.get(quantity) if quantity else None
                if value is None:
                    return None
                num, den = value
                if code == "CI-TRANSIT":
                    variant = a.strip() or None
                limit_key = variant if variant is not None else code
                max_km = rules.max_km.get(limit_key)
                if max_km is not None and num > max_km * den:
                    return None
                max_kmh = rules.max_kmh.get(limit_key) if num > 0 else None
            elif code == "CI-WASTE":
                quantity = b.strip()
                value = prep._qty.get(quantity) if quantity else None
                if value is None:
                    return None
                num, den = value
                if num > rules.max_waste_kg * den:
                    return None
                variant = a.strip() or None
            result: Any = prep._calc.get((code, variant, quantity, year, None))
            if result is None or isinstance(result, self.invalid):
                return None
            reduction_g, factors = result
        tail = b"".join(_NULL if v is None else self._text(v) for v in (variant, quantity, factors))
        got = _Activity(self._text(code), tail, reduction_g, points, num, den, max_kmh)
        self.activities[(code, a, b, year)] = got
        return got

    def quick_row(self, line_no: int, rec: list[str]) -> tuple[Any, ...] | None:
        """The row's columns (event id, user ref, user id, code, day, grams, points, status, reason,
        detail, packed event, packed stage) if the quick path knows it is pending, else None."""
        if len(rec) != self.width:
            return None
        event_id = rec[self.i_event].strip()
        if not event_id or len(event_id) > 64:
            return None
        user_ref: str | None = None
        user_id: int | None = None
        if self.i_user >= 0:
            user_ref = rec[self.i_user].strip() or None
        if user_ref is not None:
            if len(user_ref) > 64:
                return None
        elif self.i_uid >= 0:
            text = rec[self.i_uid].strip()
            if not (text.isascii() and text.isdigit() and len(text) < 18):
                return None
            user_id = int(text)
        else:
            return None
        code = rec[self.i_type].strip()
        if code not in self.allowed:
            return None
        s_us = self._when(rec[self.i_start])
        if s_us is None:
            return None
        e_us = s_us
        if self.i_end >= 0 and rec[self.i_end] != "":
            end = self._when(rec[self.i_end])
            if end is None:
                return None
            e_us = end
        if e_us < s_us or e_us - s_us > self.longest or e_us < self.earliest or e_us > self.latest:
            return None
        i_a, i_b = self.columns.get(code, _NO_COLUMNS)
        year = self.years.get(s_us // _HOUR_US) or self._year(s_us)
        key = (code, rec[i_a] if i_a >= 0 else "", rec[i_b] if i_b >= 0 else "", year)
        act = self.activities.get(key) or self._activity(*key)
        if act is None:
            return None
        if act.max_kmh is not None:
            seconds = (e_us - s_us) // 1_000_000
            if seconds <= 0 or act.num * 3600 > act.max_kmh * seconds * act.den:
                return None
        day_index = (s_us + self.day_offset) // _DAY_US
        day, day_b, day_hi, bounds = self.days.get(day_index) or self._day(day_index)
        raw = event_id.encode()
        if user_ref is None:
            ident = b"".join((_IDENT.pack(4, line_no, len(raw)), raw, _NULL))
        else:
            user_b = user_ref.encode()
            ident = b"".join((_IDENT.pack(4, line_no, len(raw)), raw, _LEN.pack(len(user_b)), user_b))
        times = _TS2.pack(8, s_us, 8, e_us)
        event = b"".join((ident, act.code, times, day_b, act.tail))
        stage = b"".join((self.stage_head, ident, _NULL if user_id is None else _INT8.pack(8, user_id),
                          act.code, times, bounds, _TS2.pack(8, s_us - self.longest, 8, max(day_hi, e_us))))
        return (event_id, user_ref, user_id, code, day, act.reduction_g, act.points, None, None, None, event, stage)

    def long_row(self, line_no: int, rec: list[str]) -> tuple[Any, ...]:
        """The row's columns the long way: `RowPreparer.prepare` of the record's dict, then `Packer.pack`."""
        r: Row = self.preparer.prepare(line_no, dict(zip(self.names, rec, strict=False)))
        self.packer.pack(r)
        day = None if r.day is None else self.dates.setdefault(r.day, r.day)
        return (r.event_id, r.user_ref, r.user_id, r.code, day, r.reduction_g, r.points, r.status, r.reason,
                r.detail, r.packed_event, r.packed_stage)

    def pack_chunk(self, lo: int, records: list[list[str]]) -> tuple[Any, ...]:
        """The records of lines `lo`, `lo + 1`, ... as the columns of a packed chunk:
        (lo, event ids, user refs, user ids, codes, days, grams, points, statuses, reasons, details,
        packed events, packed stages)."""
        quick = self.quick_row if self.quick else None
        rows: list[tuple[Any, ...]] = []
        add = rows.append
        line = lo
        for rec in records:
            got = quick(line, rec) if quick is not None else None
            add(got if got is not None else self.long_row(line, rec))
            line += 1
        if not rows:
            return (lo, *([] for _ in range(12)))
        cols = [list(c) for c in zip(*rows, strict=True)]
        return (lo, *cols)


_ACCEPTED_TAIL = struct.Struct(">iqiqiii8sii")   # user_id, reduction_g, points, 'accepted', NULL, NULL


def _text_or_null(v: str | None) -> bytes:
    if v is None:
        return _NULL
    b = v.encode()
    return _LEN.pack(len(b)) + b


def pack_events(head: bytes, rows: list[Row]) -> bytes:
    """The COPY bytes of decided rows for `behaviour_events`: per row `head` (the field count, batch,
    partner, programme), its `packed_event`, then user id, reduction, points, status, reason, detail
    (the reduction and points 0 for a rejected row)."""
    parts: list[bytes] = []
    add = parts.append
    tail = _ACCEPTED_TAIL.pack
    for r in rows:
        event = r.packed_event
        if event is None:
            raise ValueError(f"line {r.line_no} was not packed")
        add(head)
        add(event)
        if r.status == "accepted":
            add(tail(8, r.user_id, 8, r.reduction_g, 4, r.points, 8, b"accepted", -1, -1))
        else:
            user_id = r.user_id
            add((_NULL if user_id is None else _INT8.pack(8, user_id)) + _INT8.pack(8, 0) + _INT4.pack(4, 0)
                + _text_or_null(r.status) + _text_or_null(r.reason) + _text_or_null(r.detail))
    return b"".join(parts)


def rows_of(columns: tuple[Any, ...]) -> list[Row]:
    """The rows of a chunk packed by `ChunkPacker.pack_chunk`: what recording them needs (no times,
    variants, quantities, factors: those are in `packed_event`)."""
    line: int = columns[0]
    event_ids: list[str] = columns[1]
    user_refs: list[str | None] = columns[2]
    user_ids: list[int | None] = columns[3]
    codes: list[str | None] = columns[4]
    days: list[dt.date | None] = columns[5]
    grams: list[int] = columns[6]
    points: list[int] = columns[7]
    statuses: list[str | None] = columns[8]
    reasons: list[str | None] = columns[9]
    details: list[str | None] = columns[10]
    events: list[bytes | None] = columns[11]
    stages: list[bytes | None] = columns[12]
    n = len(event_ids)
    if not (len(user_refs) == len(user_ids) == len(codes) == len(days) == len(grams) == len(points)
            == len(statuses) == len(reasons) == len(details) == len(events) == len(stages) == n):
        raise ValueError("the columns of a packed chunk differ in length")
    out: list[Row] = []
    for i in range(n):
        r = Row(line + i)
        r.event_id = event_ids[i]
        r.user_ref = user_refs[i]
        r.user_id = user_ids[i]
        r.code = codes[i]
        r.day = days[i]
        r.reduction_g = grams[i]
        r.points = points[i]
        r.status = statuses[i]
        r.reason = reasons[i]
        r.detail = details[i]
        r.packed_event = events[i]
        r.packed_stage = stages[i]
        out.append(r)
    return out


def pack_stage(head: bytes, rows: list[Row], by_ref: dict[str, int], by_user: dict[int, int],
               members: dict[int, list[int]]) -> bytes:
    """The scratch table's COPY rows (`registry.behaviour._stage`) of pending rows packed by a
    preparing process (`packed_stage`): each row's packed fields, then the user id of its member if
    the import's memo knows it (NULL: the lookup finds the member), whose memo entry the row keeps
    (`Row.member`)."""
    parts: list[bytes] = [head]
    add = parts.append
    for r in rows:
        stage = r.packed_stage
        if stage is None:
            raise ValueError(f"line {r.line_no} was not packed")
        user_ref = r.user_ref
        if user_ref is not None:
            member_id = by_ref.get(user_ref)
        else:
            user_id = r.user_id
            member_id = by_user.get(0 if user_id is None else user_id)
        add(stage)
        if member_id is None:
            r.member = None
            add(_NULL)
        else:
            known = members[member_id]
            r.member = known
            add(_INT8.pack(8, known[0]))
    return b"".join(parts)


_GAIN = struct.Struct(">hiqiq")


def pack_pending(members: dict[int, list[int]], ordered: bool) -> tuple[bytes, int]:
    """What an import's memo says is waiting (`registry.behaviour.MemberMemo`: member id -> [user
    id, record, settled record]) as COPY rows (id int8, g int8) of the members whose record grew,
    in id order if `ordered`; and how many rows."""
    pack = _GAIN.pack
    grown = [(member_id, known[1] - known[2]) for member_id, known in members.items() if known[1] != known[2]]
    if ordered:
        grown.sort()
    return b"".join([pack(2, 8, member_id, 8, g) for member_id, g in grown]), len(grown)


def pack_earnings(earned: dict[int, int], kind: bytes, rest: bytes) -> bytes:
    """The COPY rows of a batch's `earn` entries (`registry.behaviour._packed_earnings`): per user
    with points above 0, in user order, the user id, `kind` (packed), the points, then `rest` (the
    packed expiry, batch, reference and time, the same for every entry). One format for the whole
    row, packed in place: ~200,000 entries for a million rows."""
    row = struct.Struct(f">hii{len(kind)}siq{len(rest)}s")
    users = sorted([u for u, p in earned.items() if p > 0])
    size = row.size
    out = bytearray(size * len(users))
    pack_into = row.pack_into
    offset = 0
    for u in users:
        pack_into(out, offset, 7, 4, u, kind, 8, earned[u], rest)
        offset += size
    return bytes(out)


class ChunkCount:
    """What a chunk's decided rows add up to (`count_chunk`)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0
        self.reduction_g = 0
        self.points = 0
        self.reasons: dict[str, int] = {}
        self.points_by_user: dict[int, int] = {}    # the accepted rows' points per user (those above 0)
        self.grams_by_day: dict[dt.date, int] = {}  # the accepted grams per day (those above 0)


def count_chunk(rows: list[Row]) -> ChunkCount:
    """Count decided rows: accepted and rejected, grams and points, rejections per reason, points
    per user and grams per day of the accepted."""
    c = ChunkCount()
    reasons, by_user, by_day = c.reasons, c.points_by_user, c.grams_by_day
    accepted = rejected = grams = points = 0
    for r in rows:
        if r.status == "accepted":
            accepted += 1
            g = r.reduction_g
            p = r.points
            grams += g
            points += p
            if p:
                user_id = r.user_id
                if user_id is None:
                    raise ValueError(f"line {r.line_no} was accepted without a user")
                by_user[user_id] = by_user.get(user_id, 0) + p
            if g:
                day = r.day
                if day is None:
                    raise ValueError(f"line {r.line_no} was accepted without a day")
                by_day[day] = by_day.get(day, 0) + g
        else:
            rejected += 1
            reason = r.reason
            if reason is None:
                raise ValueError(f"line {r.line_no} was rejected without a reason")
            reasons[reason] = reasons.get(reason, 0) + 1
    c.accepted, c.rejected, c.reduction_g, c.points = accepted, rejected, grams, points
    return c


class Classifier:
    """Decides the database-dependent outcome of each pending row of a chunk, in row order, over
    calls that may each take a part of the chunk (`classify`), from the database's answers
    (`registry.behaviour.Found`: `looked_up`, line -> member id, user id and member's record for the
    rows staged without their member; the lines of `duplicates`; line -> `seen`, see
    `registry.behaviour._LOOKUP`) and what the import remembers of the members (`members`: member id -> [user id, record, settled record];
    `by_ref`, `by_user`: `registry.behaviour.MemberMemo`'s), adding the rows of the chunk before that
    the lookup left out (`earlier_ids`, `earlier_per_day`). What it accepts goes into `accepted_ids`
    and `per_day` ((user id, type, day) -> rows); the members' new records are left in `members`
    (a row staged from the memo carries its member's entry: `Row.member`). The points of a row are the increase of
    floor(record / `per_point`) (the carry); `cap(code)` is the daily cap of a type."""

    def __init__(self, looked_up: dict[int, tuple[int | None, int | None, int | None]], duplicates: set[int],
                 seen: dict[int, int], per_point: int, cap: Callable[[str], int], members: dict[int, list[int]],
                 by_ref: dict[str, int], by_user: dict[int, int], accepted_ids: set[str],
                 per_day: dict[tuple[int, str, dt.date], int], earlier_ids: Any,
                 earlier_per_day: dict[tuple[int, str, dt.date], int]) -> None:
        self.looked_up, self.duplicates, self.seen = looked_up, duplicates, seen
        self.per_point, self.cap = per_point, cap
        self.members, self.by_ref, self.by_user = members, by_ref, by_user
        self.accepted_ids, self.per_day = accepted_ids, per_day
        self.earlier_ids, self.earlier_per_day = earlier_ids, earlier_per_day
        self.counts: dict[tuple[int, str, dt.date], int] = {}
        self.caps: dict[str, int] = {}

    def _learn(self, r: Row, member_id: int, uid: int, g: int) -> list[int]:
        """The memo's entry for a member the lookup found, made if it has none yet (the record as
        the database has it, and as settled: `MemberMemo`); an entry made since it was staged is
        newer than the lookup."""
        user_ref = r.user_ref
        if user_ref is not None:
            self.by_ref[user_ref] = member_id
        else:
            self.by_user[uid] = member_id
        known = self.members.get(member_id)
        if known is None:
            known = [uid, g, g]
            self.members[member_id] = known
        return known

    def classify(self, rows: list[Row]) -> None:
        """Decide `rows` (pending rows, each after every row given before)."""
        looked_up, duplicates, seen_of = self.looked_up, self.duplicates, self.seen
        counts, caps = self.counts, self.caps
        accepted_ids, per_day = self.accepted_ids, self.per_day
        earlier_ids, earlier_per_day = self.earlier_ids, self.earlier_per_day
        per_point = self.per_point
        for r in rows:
            line = r.line_no
            known: list[int] | None
            got = looked_up.get(line)
            if got is None:              # staged from the memo, with its entry
                known = r.member
                if known is None:
                    raise ValueError(f"line {line} was staged as known to the memo without its member")
            else:
                member_v, uid_v, g_v = got
                if uid_v is None:
                    r.reject(UNKNOWN_USER, "no member of the partner's programme with this user id")
                    continue
                if member_v is None or g_v is None:
                    raise ValueError(f"line {line}: a user without a member or a record")
                known = self._learn(r, member_v, uid_v, g_v)
            uid = known[0]
            seen = seen_of.get(line, 0)
            r.user_id = uid
            event_id = r.event_id
            if line in duplicates or event_id in accepted_ids or event_id in earlier_ids:
                r.reject(DUPLICATE, "this partner's event id was already accepted")
                continue
            if seen & 1:
                r.reject(CLAIMED_ELSEWHERE, "the same behaviour and time span was accepted from another partner")
                continue
            code, day = r.code, r.day
            if code is None or day is None:
                raise ValueError(f"line {r.line_no} is pending without a type or a day")
            key = (uid, code, day)
            n = counts.get(key, -1)
            if n < 0:
                n = (seen >> 1) + earlier_per_day.get(key, 0)
            n += 1
            cap = caps.get(code, 0)
            if not cap:
                cap = self.cap(code)
                caps[code] = cap
            if n > cap:
                r.reject(OVER_CAP, f"more than {cap} {code} a day")
                continue
            counts[key] = n
            before = known[1]
            after = before + r.reduction_g
            r.points = r.points + after // per_point - before // per_point
            known[1] = after
            accepted_ids.add(event_id)
            per_day[key] = per_day.get(key, 0) + 1
            r.status = "accepted"
