"""Emission factors: a versioned table shipped with the package, synced into the database.

The shipped version is `registry/data/emission_factors.csv` (one row per key, region and year, with
its unit, gas basis, source and validity). `sync_shipped()` copies it into the `emission_factors`
table without ever touching rows that operators added with `add_factor()`; an operator adds a new
year (or a more specific region) as data, and calculators pick it up through `resolve()` with no
code change.

Values stay exact: the CSV and the table hold decimal text ("0.5306"), and `FactorRow.grams_per()`
turns it into an exact `fractions.Fraction` of grams per activity unit. No float is ever involved.

Resolution (`resolve`): the most specific region wins (city `CN-GD-SZ` → province `CN-GD` →
nation `CN` → `GLOBAL`), then any explicit fallback regions (e.g. `GB` for a UK DESNZ factor with
no Chinese equivalent); within the first region that has a usable row, the latest year not after
the requested year. A row whose `valid_from`/`valid_to` excludes the requested year is skipped.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from importlib import resources
from typing import Any

from sqlalchemy import CheckConstraint, Date, DateTime, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from registry import audit
from registry.actors import Actor
from registry.db import Base, BigKey, utcnow
from registry.errors import Conflict, InvalidInput, NotFound
from registry.models import HolderKind

GAS_BASES = ("CO2", "CO2e")
ORIGINS = ("shipped", "operator")
CSV_COLUMNS = ("key", "value", "unit", "gas_basis", "region", "year", "source", "valid_from", "valid_to")
GLOBAL = "GLOBAL"

# Mass units of the numerator, in grams.
_MASS_G = {"g": 1, "kg": 1000, "t": 1_000_000}
# Activity units that convert into each other, in a common base of their group.
_PER_UNIT: dict[str, tuple[str, Fraction]] = {
    "kWh": ("energy", Fraction(1)), "MWh": ("energy", Fraction(1000)), "GWh": ("energy", Fraction(10**6)),
    "kg": ("mass", Fraction(1)), "t": ("mass", Fraction(1000)),
    "m3": ("volume", Fraction(1)), "L": ("volume", Fraction(1, 1000)),
}
_KEY_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
_REGION_RE = re.compile(r"^(GLOBAL|[A-Z]{2}(-[A-Z0-9]{1,8})*)$")
_UNIT_RE = re.compile(r"^(g|kg|t) (CO2|CO2e)/([A-Za-z0-9_-]+)$")


class EmissionFactor(Base):
    """One stored factor row; `value` is exact decimal text, never a float."""

    __tablename__ = "emission_factors"
    __table_args__ = (
        UniqueConstraint("key", "region", "year"),
        CheckConstraint("gas_basis IN ('CO2', 'CO2e')", name="gas_basis"),
        CheckConstraint("origin IN ('shipped', 'operator')", name="origin"),
        CheckConstraint("valid_from IS NULL OR valid_to IS NULL OR valid_from <= valid_to", name="validity"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    key: Mapped[str] = mapped_column(String(80))
    value: Mapped[str] = mapped_column(String(40))
    unit: Mapped[str] = mapped_column(String(40))
    gas_basis: Mapped[str] = mapped_column(String(8))
    region: Mapped[str] = mapped_column(String(32))
    year: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    valid_from: Mapped[dt.date | None] = mapped_column(Date)
    valid_to: Mapped[dt.date | None] = mapped_column(Date)
    origin: Mapped[str] = mapped_column(String(16), default="shipped")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


@dataclass(frozen=True, slots=True)
class FactorRow:
    """A factor as calculations see it, from the CSV (id None) or the table (id set)."""

    key: str
    value: str
    unit: str
    gas_basis: str
    region: str
    year: int
    source: str
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None
    origin: str = "shipped"
    id: int | None = None

    @property
    def exact(self) -> Fraction:
        """The value as an exact rational, in `unit`."""
        return Fraction(Decimal(self.value))

    @property
    def per(self) -> str:
        """The activity unit of the denominator, e.g. `kWh` for `kg CO2/kWh`."""
        return _parse_unit(self.unit)[2]

    def grams_per(self, activity_unit: str) -> Fraction:
        """Exact grams of `gas_basis` per one `activity_unit` (e.g. 0.5306 kg CO2/kWh → 530.6 g per kWh;
        0.5703 t CO2/MWh → 570.3 g per kWh). Raises InvalidInput if the units do not convert."""
        mass, _gas, per = _parse_unit(self.unit)
        grams = self.exact * _MASS_G[mass]
        if per == activity_unit:
            return grams
        have, want = _PER_UNIT.get(per), _PER_UNIT.get(activity_unit)
        if have is None or want is None or have[0] != want[0]:
            raise InvalidInput(f"factor {self.key} ({self.region} {self.year}) is per {per}, "
                               f"not convertible to per {activity_unit}", field="unit")
        return grams * want[1] / have[1]

    def applies_in(self, year: int) -> bool:
        if self.year > year:
            return False
        if self.valid_from is not None and self.valid_from.year > year:
            return False
        return not (self.valid_to is not None and self.valid_to.year < year)

    def cite(self) -> dict[str, Any]:
        """What a calculation records about the row it used."""
        return {"id": self.id, "key": self.key, "region": self.region, "year": self.year,
                "value": self.value, "unit": self.unit, "gas_basis": self.gas_basis,
                "source": self.source, "origin": self.origin}

    @classmethod
    def of(cls, f: EmissionFactor) -> FactorRow:
        return cls(key=f.key, value=f.value, unit=f.unit, gas_basis=f.gas_basis, region=f.region,
                   year=f.year, source=f.source, valid_from=f.valid_from, valid_to=f.valid_to,
                   origin=f.origin, id=f.id)


def region_chain(region: str, fallback_regions: Sequence[str] = ()) -> list[str]:
    """`CN-GD-SZ` → [`CN-GD-SZ`, `CN-GD`, `CN`, `GLOBAL`] followed by the fallbacks (no repeats)."""
    if not isinstance(region, str) or not _REGION_RE.match(region):
        raise InvalidInput(f"region {region!r} is not a code like CN, CN-GD or CN-GD-SZ", field="region")
    parts = region.split("-")
    chain = ["-".join(parts[:i]) for i in range(len(parts), 0, -1)]
    for r in (GLOBAL, *fallback_regions):
        if r not in chain:
            chain.append(r)
    return chain


def _pick(rows: Iterable[FactorRow], key: str, region: str, year: int,
          fallback_regions: Sequence[str]) -> FactorRow:
    chain = region_chain(region, fallback_regions)
    usable = [r for r in rows if r.key == key and r.applies_in(year)]
    for reg in chain:
        here = [r for r in usable if r.region == reg]
        if here:
            return max(here, key=lambda r: r.year)
    raise NotFound(f"no emission factor {key} for region {region} (or {', '.join(chain[1:]) or 'nothing'}) "
                   f"in or before {year}", field="region", code="factor_not_found")


class FactorTable:
    """An immutable in-memory set of factor rows (the shipped CSV, or a snapshot of the table)."""

    def __init__(self, rows: Iterable[FactorRow]) -> None:
        self._rows = tuple(rows)
        seen: set[tuple[str, str, int]] = set()
        for r in self._rows:
            k = (r.key, r.region, r.year)
            if k in seen:
                raise Conflict(f"duplicate factor {k}", field="key", code="duplicate")
            seen.add(k)

    @property
    def rows(self) -> tuple[FactorRow, ...]:
        return self._rows

    def with_rows(self, *rows: FactorRow) -> FactorTable:
        """A new table with extra rows (e.g. a year an operator added)."""
        return FactorTable((*self._rows, *rows))

    def resolve(self, key: str, region: str, year: int, fallback_regions: Sequence[str] = ()) -> FactorRow:
        return _pick(self._rows, key, region, year, fallback_regions)

    @classmethod
    def from_session(cls, session: Session) -> FactorTable:
        return cls(FactorRow.of(f) for f in session.scalars(select(EmissionFactor)))


FactorSource = FactorTable | Session


def resolve(source: FactorSource, key: str, region: str, year: int,
            fallback_regions: Sequence[str] = ()) -> FactorRow:
    """The row to use for `key` in `region` in `year` (see the module docstring for the order).

    `source` is a `FactorTable` (e.g. `shipped_table()`, no database) or a Session (the
    `emission_factors` table, shipped plus operator rows). Raises NotFound (field "region")."""
    if isinstance(source, FactorTable):
        return source.resolve(key, region, year, fallback_regions)
    chain = region_chain(region, fallback_regions)
    found = source.scalars(select(EmissionFactor).where(
        EmissionFactor.key == key, EmissionFactor.region.in_(chain), EmissionFactor.year <= year))
    return _pick((FactorRow.of(f) for f in found), key, region, year, fallback_regions)


# -- parsing and validation ---------------------------------------------------------------------

def _parse_unit(unit: str) -> tuple[str, str, str]:
    m = _UNIT_RE.match(unit or "")
    if not m:
        raise InvalidInput(f"unit {unit!r} is not like 'kg CO2/kWh' (g|kg|t, CO2|CO2e, per unit)", field="unit")
    return m.group(1), m.group(2), m.group(3)


def _parse_date(text: str | dt.date | None, field: str) -> dt.date | None:
    if text is None or text == "":
        return None
    if isinstance(text, dt.date):
        return text
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{field} {text!r} is not an ISO date", field=field) from None


def make_row(*, key: str, value: str | int | Decimal, unit: str, gas_basis: str, region: str,
             year: int | str, source: str, valid_from: str | dt.date | None = None,
             valid_to: str | dt.date | None = None, origin: str = "shipped",
             id: int | None = None) -> FactorRow:
    """Validate one factor and return it as a FactorRow. Raises InvalidInput naming the field.

    `value` is decimal text, an int or a Decimal (never a float): it is stored exactly as given."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise InvalidInput(f"key {key!r} is not like 'grid.average'", field="key")
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise InvalidInput("value must be decimal text, an int or a Decimal (no float)", field="value")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidInput(f"value {value!r} is not a decimal number", field="value") from None
    if not d.is_finite():
        raise InvalidInput("value must be finite", field="value")
    _mass, gas, _per = _parse_unit(unit)
    if gas_basis not in GAS_BASES:
        raise InvalidInput(f"gas_basis must be one of {', '.join(GAS_BASES)}", field="gas_basis")
    if gas != gas_basis:
        raise InvalidInput(f"unit {unit!r} does not match gas_basis {gas_basis}", field="unit")
    region_chain(region)
    try:
        y = int(year)
    except (TypeError, ValueError):
        raise InvalidInput(f"year {year!r} is not an integer", field="year") from None
    if isinstance(year, bool) or not 1990 <= y <= 2100:
        raise InvalidInput("year must be between 1990 and 2100", field="year")
    if not isinstance(source, str) or not source.strip():
        raise InvalidInput("source (document name and number) is required", field="source")
    vf, vt = _parse_date(valid_from, "valid_from"), _parse_date(valid_to, "valid_to")
    if vf is not None and vt is not None and vf > vt:
        raise InvalidInput("valid_from is after valid_to", field="valid_to")
    if origin not in ORIGINS:
        raise InvalidInput(f"origin must be one of {', '.join(ORIGINS)}", field="origin")
    return FactorRow(key=key, value=str(value).strip(), unit=unit, gas_basis=gas_basis, region=region,
                     year=y, source=source.strip(), valid_from=vf, valid_to=vt, origin=origin, id=id)


def read_csv(text: str) -> list[FactorRow]:
    """Parse factor CSV text (header `CSV_COLUMNS`). Raises InvalidInput naming the line and field."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise InvalidInput(f"factor CSV lacks columns {', '.join(missing)}", field=missing[0])
    rows = []
    for line, rec in enumerate(reader, start=2):
        try:
            rows.append(make_row(key=rec["key"], value=rec["value"], unit=rec["unit"],
                                 gas_basis=rec["gas_basis"], region=rec["region"], year=rec["year"],
                                 source=rec["source"], valid_from=rec["valid_from"],
                                 valid_to=rec["valid_to"]))
        except InvalidInput as e:
            raise InvalidInput(f"line {line}: {e.message}", field=e.field) from e
    return rows


def shipped_csv_text() -> str:
    return resources.files("registry").joinpath("data/emission_factors.csv").read_text(encoding="utf-8")


@functools.cache
def shipped_table() -> FactorTable:
    """The shipped CSV as an in-memory table (parsed once per process)."""
    return FactorTable(read_csv(shipped_csv_text()))


# -- use cases ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SyncReport:
    inserted: int
    updated: int
    unchanged: int
    operator_kept: int


_SYNCED_FIELDS = ("value", "unit", "gas_basis", "source", "valid_from", "valid_to")


def sync_shipped(session: Session, table: FactorTable | None = None) -> SyncReport:
    """Bring the shipped rows into `emission_factors`; idempotent. The caller commits.

    A shipped row that changed in a new package version is updated (old and new values audited);
    a row an operator added for the same key, region and year is never overwritten."""
    table = table or shipped_table()
    existing = {(f.key, f.region, f.year): f for f in session.scalars(select(EmissionFactor))}
    inserted = updated = unchanged = kept = 0
    changes: list[dict[str, Any]] = []
    for row in table.rows:
        f = existing.get((row.key, row.region, row.year))
        if f is None:
            session.add(EmissionFactor(**_columns(replace(row, origin="shipped"))))
            inserted += 1
        elif f.origin == "operator":
            kept += 1
        elif any(getattr(f, c) != getattr(row, c) for c in _SYNCED_FIELDS):
            changes.append({"key": row.key, "region": row.region, "year": row.year,
                            "old": f.value, "new": row.value})
            for c in _SYNCED_FIELDS:
                setattr(f, c, getattr(row, c))
            updated += 1
        else:
            unchanged += 1
    session.flush()
    if inserted or updated:
        audit.record(session, None, "emission_factors.synced", "emission_factors", "shipped",
                     {"inserted": inserted, "updated": updated, "changes": changes})
    return SyncReport(inserted, updated, unchanged, kept)


def add_factor(session: Session, actor: Actor, *, key: str, value: str | int | Decimal, unit: str,
               gas_basis: str, region: str, year: int, source: str,
               valid_from: str | dt.date | None = None, valid_to: str | dt.date | None = None) -> EmissionFactor:
    """Operator only: add a factor row (e.g. next year's grid factor). Audited; the caller commits.

    Raises Forbidden (not an operator), InvalidInput (naming the field), Conflict (the key, region
    and year exist: add a new year or a more specific region instead of changing history)."""
    actor.require_kind(HolderKind.OPERATOR)
    row = make_row(key=key, value=value, unit=unit, gas_basis=gas_basis, region=region, year=year,
                   source=source, valid_from=valid_from, valid_to=valid_to, origin="operator")
    if session.scalar(select(EmissionFactor.id).where(EmissionFactor.key == row.key,
                                                       EmissionFactor.region == row.region,
                                                       EmissionFactor.year == row.year)):
        raise Conflict(f"factor {row.key} {row.region} {row.year} exists", field="year", code="duplicate")
    f = EmissionFactor(**_columns(row))
    session.add(f)
    session.flush()
    audit.record(session, actor, "emission_factor.added", "emission_factor", f.id,
                 {k: v for k, v in FactorRow.of(f).cite().items() if k != "id"}
                 | {"valid_from": row.valid_from, "valid_to": row.valid_to})
    return f


def _columns(row: FactorRow) -> dict[str, Any]:
    return {"key": row.key, "value": row.value, "unit": row.unit, "gas_basis": row.gas_basis,
            "region": row.region, "year": row.year, "source": row.source, "valid_from": row.valid_from,
            "valid_to": row.valid_to, "origin": row.origin}
