"""The encoders built once for the hot paths give json.dumps' text, and `in_list` selects what `IN` selects.

`audit.canonical_json` (every audit payload) and `registry.db._json_text` (JSON columns written by COPY)
call CPython's C encoder directly; an audit record's text is hashed into the chain, so it must be
exactly what json.dumps with the same options writes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from registry import audit
from registry.db import _json_text, in_list
from registry.models import Holder
from tests.factories import party

scalars = st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.text() | st.floats(allow_nan=False)
values: Any = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(values)
def test_canonical_json_is_json_dumps(value: Any) -> None:
    assert audit.canonical_json(value) == json.dumps(value, sort_keys=True, separators=(",", ":"),
                                                      ensure_ascii=False, default=str)


@settings(max_examples=300, deadline=None)
@given(values)
def test_json_text_is_json_dumps(value: Any) -> None:
    expected = None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert _json_text(value) == expected


def test_canonical_json_falls_back_to_str_for_other_values() -> None:
    import datetime as dt
    assert audit.canonical_json({"b": dt.date(2026, 12, 3), "a": [1]}) == '{"a":[1],"b":"2026-12-03"}'


def test_in_list_selects_what_in_selects(session: Any) -> None:
    ids = [party(session, "individual").holder.id for _ in range(5)]
    session.flush()
    want = sorted(ids[::2])
    got = session.scalars(select(Holder.id).where(in_list(session, Holder.id, want)).order_by(Holder.id)).all()
    assert list(got) == want
    assert session.scalars(select(Holder.id).where(in_list(session, Holder.id, []))).all() == []
