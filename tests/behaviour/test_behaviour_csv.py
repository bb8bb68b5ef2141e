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
