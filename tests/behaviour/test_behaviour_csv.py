"""CSV import through `flask registry import-behaviour`, and the streaming readers."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry import behaviour_io, points
from registry.behaviour import BehaviourEvent
from registry.db import utcnow
from registry.errors import InvalidInput
from tests.behaviour.world import build


def test_cli_imports_a_csv_with_a_summary_and_again_changes_nothing(runner: Any, session: Session,
                                                                     tmp_path: Path) -> None:
    bw = build(session)
    start = (utcnow() - dt.timedelta(days=1)).replace(microsecond=0)
    end = start + dt.timedelta(minutes=30)
    lines = ["event_id,user,type,started_at,ended_at,mode,distance_km,category,weight_kg"]
    for i in range(25):
        lines.append(f"c{i},card-{i % 3},CI-TRANSIT,{(start + dt.timedelta(minutes=i)).isoformat()}+00:00,"
                     f"{(end + dt.timedelta(minutes=i)).isoformat()}+00:00,metro,10,,")
    lines.append(f'c0,card-0,CI-TRANSIT,{start.isoformat()},{end.isoformat()},metro,10,,')   # duplicate
    lines.append(f'"c,q",card-1,ENG-CHECKIN,{start.isoformat()},,,,,')                       # quoted id
    path = tmp_path / "metro.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = runner.invoke(args=["registry", "import-behaviour", str(path), "--partner", "sz-metro",
                            "--chunk-size", "7"])
    assert r.exit_code == 0, r.output
    # 25 metro trips × 467 g = 11675 g; under the cap of 10 a day: card-0 has 9 (4203 g → 420 points),
    # card-1 8 (3736 g → 373) and a check-in (5), card-2 8 (373): 1171 points
    assert "rows 27: accepted 26, rejected 1; reduction 11675 g; points 1171" in r.output
    assert "rejected duplicate: 1" in r.output
    assert points.balance(session, bw.uid(0)) == 420                       # 9 × 467 = 4203 g
    session.rollback()   # SQLite: release the read transaction before the CLI writes
    again = runner.invoke(args=["registry", "import-behaviour", str(path), "--partner", "sz-metro"])
    assert again.exit_code == 0 and "already imported: nothing changed" in again.output
    assert session.scalar(select(func.count()).select_from(BehaviourEvent)) == 27
    session.rollback()
    check = runner.invoke(args=["registry", "check-points"])
    assert check.exit_code == 0 and "points ledger sound" in check.output
    unknown = runner.invoke(args=["registry", "import-behaviour", str(path), "--partner", "nobody"])
    assert unknown.exit_code != 0 and "no partner" in unknown.output


def test_csv_reader_streams_rows_and_needs_a_header() -> None:
    data = b"event_id,type,user\r\na,CI-BIKE,u1\r\n\r\n\"b\nc\",ENG-QUIZ,u2\r\n"
    seen: list[int] = []
    rows = list(behaviour_io.csv_rows(io.BytesIO(data), seen.append))
    assert rows == [{"event_id": "a", "type": "CI-BIKE", "user": "u1"},
                    {"event_id": "b\nc", "type": "ENG-QUIZ", "user": "u2"}]
    assert sum(seen) == len(data)
    with pytest.raises(InvalidInput):
        list(behaviour_io.csv_rows(io.BytesIO(b"foo,bar\n1,2\n")))


def test_json_reader_reads_row_by_row_across_buffer_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(behaviour_io, "_READ", 3)
    body = '{"partner": {"x": [1, 2]}, "rows": [{"event_id": "一", "distance_km": 12.345}, {"n": 1234567}], "z": 0}'
    rows = list(behaviour_io.json_rows(io.BytesIO(body.encode())))
    assert [r["event_id"] if "event_id" in r else r["n"] for r in rows] == ["一", 1234567]
    assert str(rows[0]["distance_km"]) == "12.345"     # a Decimal, never a float
    for bad in (b'{"rows": [1]}', b'{"rows": {}}', b'{"x": 1}', b'[]', b'{"rows": []} x', b'{"rows": [{}'):
        with pytest.raises(InvalidInput):
            list(behaviour_io.json_rows(io.BytesIO(bad)))
    assert list(behaviour_io.json_rows(io.BytesIO(b' { "rows" : [ ] } '))) == []


@settings(max_examples=400, deadline=None)
@given(st.datetimes(min_value=dt.datetime(1900, 1, 2), max_value=dt.datetime(2200, 1, 1)),
       st.integers(-14 * 60, 14 * 60), st.sampled_from(["T", " "]),
       st.sampled_from(["minutes", "seconds", "milliseconds", "microseconds"]))
def test_times_with_an_offset_are_read_as_utc_like_astimezone(t: dt.datetime, minutes: int, sep: str,
                                                               spec: str) -> None:
    """The fast path of `_when` (the naive part less a remembered ±HH:MM offset) gives the time
    `astimezone(UTC)` gives, for every offset and precision."""
    from registry.behaviour_rules import _when

    text = t.replace(tzinfo=dt.timezone(dt.timedelta(minutes=minutes))).isoformat(sep=sep, timespec=spec)
    want = dt.datetime.fromisoformat(text).astimezone(dt.UTC).replace(tzinfo=None)
    assert _when({"at": text}, "at") == want
    assert _when({"at": text}, "at") == want   # the offset is now remembered: the fast path
    # A form the full parser takes and the naive part alone does not (a bare decimal point).
    odd = text[:19] + "." + text[-6:] if spec == "seconds" and text[-6] in "+-" else None
    if odd is not None:
        assert _when({"at": odd}, "at") == dt.datetime.fromisoformat(odd).astimezone(dt.UTC).replace(tzinfo=None)


@pytest.mark.parametrize("text", ["2026-11-20T08:15+08:0", "2026-13-20T08:15:00+08:00", "2026-11-20T08:15:00+25:00",
                                  "2026-11-20T08:15:00.", "tomorrow at 08:15:00 +08:00", ""])
def test_malformed_times_are_invalid_naming_the_field(text: str) -> None:
    from registry.behaviour_rules import _when

    with pytest.raises(InvalidInput) as e:
        _when({"at": text}, "at")
    assert e.value.field == "at"


@pytest.mark.parametrize("apart", [True, False], ids=["prepared-apart", "prepared-here"])
def test_a_file_prepared_in_a_child_process_is_recorded_as_one_prepared_here(
        apart: bool, session: Session, session_factory: Any, tmp_path: Path) -> None:
    """`prepare_apart` reads and prepares the rows in a child process (on PostgreSQL packed for COPY):
    every stored field and outcome is what preparing them here gives, chunk after chunk."""
    from registry import behaviour, partners
    from registry.behaviour_rules import RowPreparer, Rules

    bw = build(session, residents=3)
    # A fixed time of day (00:10 UTC, 08:10 in China), whenever the test runs: the 11 trips must fall
    # in one calendar day of the programme (UTC+8), and the two check-ins below in two.
    day = (utcnow() - dt.timedelta(days=2)).replace(hour=0, minute=10, second=0, microsecond=0)

    def t(x: dt.datetime) -> str:
        return (x + dt.timedelta(hours=8)).isoformat() + "+08:00"

    lines = ["event_id,user,user_id,type,started_at,ended_at,mode,distance_km,category,weight_kg"]
    for i in range(12):   # card-1 takes 11 trips in a day: the 11th is over the cap of 10
        s = day + dt.timedelta(minutes=40 * i)
        lines.append(f"m{i},card-{1 if i < 11 else 2},,CI-TRANSIT,{t(s)},{t(s + dt.timedelta(minutes=25))},"
                     f"{'metro' if i % 2 else 'bus'},{[10, 3.5, 7.25][i % 3]},,")
    s = day + dt.timedelta(hours=20)
    lines += [
        f"m0,card-0,,CI-TRANSIT,{t(s)},{t(s + dt.timedelta(minutes=30))},metro,10,,",         # duplicate
        f"一号,card-9,,CI-TRANSIT,{t(s)},{t(s + dt.timedelta(minutes=30))},metro,10,,",       # unknown user
        f"bad,card-0,,CI-TRANSIT,{t(s)},{t(s + dt.timedelta(minutes=30))},bus,abc,,",         # invalid
        f"fast,card-0,,CI-TRANSIT,{t(s)},{t(s + dt.timedelta(minutes=2))},metro,30,,",        # implausible
        f"old,card-0,,CI-TRANSIT,{t(s - dt.timedelta(days=60))},,metro,10,,",                 # claim window
        f"bike,card-0,,CI-BIKE,{t(s)},,,,,",                                                   # not allowed
        f",card-0,,ENG-CHECKIN,{t(s)},,,,,",                                                   # no event id
        f'"c,1",,{bw.uid(0)},ENG-CHECKIN,{t(s)},,,,,',                                         # by user id
        f"c2,card-0,,ENG-CHECKIN,{(s - dt.timedelta(days=1)).isoformat()},,,,,",               # no offset
    ]
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    seen: list[int] = []
    result = behaviour_io.import_csv(session_factory, str(path), "sz-metro", chunk_size=5,
                                     prepare_apart=apart, on_bytes=seen.append)
    assert sum(seen) == path.stat().st_size
    assert (result.rows, result.accepted) == (21, 13)
    assert result.reasons == {"duplicate": 1, "implausible": 1, "invalid": 2, "outside_claim_window": 1,
                              "over_daily_cap": 1, "type_not_allowed": 1, "unknown_user": 1}
    assert result.reasons == behaviour.reasons_of(session, result.batch_id)   # counted on the way = stored
    partner = partners.partner_by_code(session, "sz-metro")
    batch = session.get(behaviour.BehaviourBatch, result.batch_id)
    assert batch is not None
    preparer = RowPreparer(Rules(), region=partner.region, allowed=partners.allowed_types(session, partner.id),
                           received_at=batch.received_at, factors=behaviour.factor_snapshot(session))
    expected = [preparer.prepare(n, raw) for n, raw in enumerate(behaviour_io.csv_rows(path.open("rb")), 1)]
    stored = session.scalars(select(BehaviourEvent).where(BehaviourEvent.batch_id == result.batch_id)
                             .order_by(BehaviourEvent.line_no)).all()
    assert len(stored) == len(expected)
    for e, r in zip(stored, expected, strict=True):
        assert (e.line_no, e.partner_id, e.programme_id, e.event_id, e.user_ref, e.code, e.started_at, e.ended_at,
                e.day, e.variant, e.quantity, e.factors) == (
            r.line_no, partner.id, partner.programme_id, r.event_id, r.user_ref, r.code, r.started_at, r.ended_at,
            r.day, r.variant, r.quantity, r.factors)
        if r.status is not None:   # rejected in Python: the same reason and detail
            assert (e.status, e.reason, e.detail, e.user_id) == (r.status, r.reason, r.detail, r.user_id)
        elif e.status == "accepted":
            assert (e.reduction_g, e.user_id) == (r.reduction_g, bw.uid(0 if e.line_no > 12 else
                                                                          1 if e.line_no <= 11 else 2))
    assert points.balance(session, bw.uid(1)) == sum(e.points for e in stored if e.user_id == bw.uid(1)) > 0
    assert behaviour.check_ledger(session) == []


def test_an_import_prepared_apart_that_fails_stops_its_child_and_resumes(session: Session, session_factory: Any,
                                                                         tmp_path: Path) -> None:
    bw = build(session, residents=3)
    start = (utcnow() - dt.timedelta(days=1)).replace(microsecond=0)
    lines = ["event_id,user,type,started_at,ended_at,mode,distance_km"]
    lines += [f"r{i},card-{i % 3},CI-TRANSIT,{(start + dt.timedelta(minutes=30 * i)).isoformat()},"
              f"{(start + dt.timedelta(minutes=30 * i + 20)).isoformat()},bus,{i % 7 + 1}" for i in range(40)]
    path = tmp_path / "trips.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    calls: list[int] = []

    def stop_after_two(chunk: Any) -> None:
        calls.append(chunk.rows)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        behaviour_io.import_csv(session_factory, str(path), "sz-metro", chunk_size=6, prepare_apart=True,
                                on_chunk=stop_after_two)
    resumed = behaviour_io.import_csv(session_factory, str(path), "sz-metro", chunk_size=6, prepare_apart=True)
    assert (resumed.rows, resumed.accepted + resumed.rejected) == (40, 40)
    assert resumed.reasons == {"over_daily_cap": resumed.rejected}   # of the whole batch, not what it recorded
    assert resumed.rejected > 0
    assert points.balance(session, bw.uid(0)) + points.balance(session, bw.uid(1)) \
        + points.balance(session, bw.uid(2)) == resumed.points
    session.rollback()   # SQLite: release the session's transaction before the import writes
    with pytest.raises(InvalidInput):
        bad = tmp_path / "bad.csv"
        bad.write_text("foo,bar\n1,2\n", encoding="utf-8")
        behaviour_io.import_csv(session_factory, str(bad), "sz-metro", prepare_apart=True)
