"""What every calculator shares: the result, exact arithmetic, the single rounding, input checks.

Arithmetic is exact (`fractions.Fraction` from decimal text); each reported figure is rounded once,
at the end, half away from zero to whole grams (`round_half_up`). `reduction_g` is rounded from the
exact ER, so it may differ by a gram or two from baseline_g − project_g − leakage_g of the rounded
components; the components are reported for transparency, the reduction is the quantity of record.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from registry.errors import InvalidInput
from registry.factors import FactorRow, FactorSource, resolve, shipped_table


def round_half_up(x: Fraction) -> int:
    """Round to the nearest integer, halves away from zero (2.5 → 3, −2.5 → −3)."""
    n = abs(x)
    r = (n.numerator * 2 + n.denominator) // (n.denominator * 2)
    return r if x >= 0 else -r


def fmt(x: Fraction) -> str:
    """Exact decimal text when it terminates, else 6 places prefixed with ≈."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d == 1:
        text = str(Decimal(x.numerator) / Decimal(x.denominator))
        if "E" in text or "e" in text:
            text = format(Decimal(x.numerator) / Decimal(x.denominator), "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return text
    return "≈" + format(Decimal(x.numerator) / Decimal(x.denominator), ".6f")


@dataclass(frozen=True)
class Calculation:
    """The outcome of one calculation: ER = BE − PE − LE in grams, never negative.

    `withheld_g` is the part of the reduction not issued (e.g. a forestry non-permanence buffer);
    `issuable_g` = reduction_g − withheld_g. `factors` cites every factor row used, with its year."""

    methodology: str
    reduction_g: int
    baseline_g: int
    project_g: int
    leakage_g: int
    formula: str
    factors: list[dict[str, Any]]
    inputs: dict[str, Any]
    clamped: bool = False
    withheld_g: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def issuable_g(self) -> int:
        return self.reduction_g - self.withheld_g

    def as_dict(self) -> dict[str, Any]:
        return {"methodology": self.methodology, "reduction_g": self.reduction_g,
                "baseline_g": self.baseline_g, "project_g": self.project_g, "leakage_g": self.leakage_g,
                "withheld_g": self.withheld_g, "issuable_g": self.issuable_g, "clamped": self.clamped,
                "formula": self.formula, "factors": self.factors, "inputs": self.inputs,
                "notes": self.notes}


def build(code: str, *, be: Fraction, pe: Fraction, le: Fraction = Fraction(0), formula: str,
          rows: Sequence[FactorRow], inputs: dict[str, Any], notes: Sequence[str] = (),
          withheld_share: Fraction | None = None) -> Calculation:
    """Compute ER = BE − PE − LE exactly, clamp at 0 (saying so), round once per reported figure."""
    er = be - pe - le
    notes = list(notes)
    clamped = er < 0
    if clamped:
        notes.append(f"BE − PE − LE = {fmt(er)} g is negative: the reduction is clamped to 0")
        er = Fraction(0)
    reduction = round_half_up(er)
    withheld = round_half_up(er * withheld_share) if withheld_share is not None else 0
    seen: set[tuple[str, str, int]] = set()
    cited = []
    for r in rows:
        if (r.key, r.region, r.year) not in seen:
            seen.add((r.key, r.region, r.year))
            cited.append(r.cite())
    return Calculation(methodology=code, reduction_g=reduction, baseline_g=round_half_up(be),
                       project_g=round_half_up(pe), leakage_g=round_half_up(le),
                       formula=f"{formula}; ER = BE − PE − LE = {fmt(er)} g → {reduction} g (rounded half up)",
                       factors=cited, inputs=inputs, clamped=clamped, withheld_g=withheld, notes=notes)


class Activity:
    """Reads and validates a calculator's activity data; every error names its field."""

    def __init__(self, data: Mapping[str, Any], prefix: str = "") -> None:
        if not isinstance(data, Mapping):
            raise InvalidInput("activity data must be a mapping", field=prefix.rstrip(".") or "activity")
        self.data = data
        self.prefix = prefix
        self.echo: dict[str, Any] = {}

    def _name(self, name: str) -> str:
        return self.prefix + name

    def number(self, name: str, *, default: str | None = None, positive: bool = False,
               maximum: Fraction | None = None) -> Fraction:
        """An exact non-negative number. Accepts int, Decimal, decimal text, or a float (read through
        its shortest text, e.g. 1.1 → "1.1", never its binary value)."""
        raw = self.data.get(name)
        if raw is None or raw == "":
            if default is None:
                raise InvalidInput(f"{self._name(name)} is required", field=self._name(name))
            raw = default
        if isinstance(raw, bool) or not isinstance(raw, int | float | str | Decimal):
            raise InvalidInput(f"{self._name(name)} must be a number", field=self._name(name))
        try:
            d = Decimal(str(raw).strip())
        except InvalidOperation:
            raise InvalidInput(f"{self._name(name)} is not a number: {raw!r}", field=self._name(name)) from None
        if not d.is_finite():
            raise InvalidInput(f"{self._name(name)} must be finite", field=self._name(name))
        value = Fraction(d)
        if value < 0:
            raise InvalidInput(f"{self._name(name)} must not be negative", field=self._name(name))
        if positive and value == 0:
            raise InvalidInput(f"{self._name(name)} must be positive", field=self._name(name))
        if maximum is not None and value > maximum:
            raise InvalidInput(f"{self._name(name)} must be at most {fmt(maximum)}", field=self._name(name))
        self.echo[name] = str(d)
        return value

    def choice(self, name: str, options: Sequence[str], *, default: str | None = None) -> str:
        raw = self.data.get(name, default)
        if raw is None or raw == "":
            raise InvalidInput(f"{self._name(name)} is required", field=self._name(name))
        if raw not in options:
            raise InvalidInput(f"{self._name(name)} must be one of {', '.join(options)}, not {raw!r}",
                               field=self._name(name))
        self.echo[name] = raw
        return str(raw)

    def text(self, name: str) -> str:
        raw = self.data.get(name)
        if not isinstance(raw, str) or not raw.strip():
            raise InvalidInput(f"{self._name(name)} is required", field=self._name(name))
        self.echo[name] = raw.strip()
        return raw.strip()

    def region(self) -> str:
        return self.text("region")

    def year(self) -> int:
        """The activity year: `year` (int) or the year of `date` (ISO text or a date)."""
        raw = self.data.get("year")
        if raw is None and self.data.get("date") is not None:
            d = self.data["date"]
            try:
                raw = (d if isinstance(d, dt.date) else dt.date.fromisoformat(str(d))).year
            except ValueError:
                raise InvalidInput(f"{self._name('date')} is not an ISO date", field=self._name("date")) from None
        if raw is None:
            raise InvalidInput(f"{self._name('year')} is required", field=self._name("year"))
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise InvalidInput(f"{self._name('year')} must be an integer", field=self._name("year"))
        try:
            year = int(raw)
        except ValueError:
            raise InvalidInput(f"{self._name('year')} must be an integer", field=self._name("year")) from None
        if not 1990 <= year <= 2100:
            raise InvalidInput(f"{self._name('year')} must be between 1990 and 2100", field=self._name("year"))
        self.echo["year"] = year
        return year


def source_or_shipped(factors: FactorSource | None) -> FactorSource:
    return shipped_table() if factors is None else factors


def lookup(factors: FactorSource | None, key: str, region: str, year: int,
           fallback_regions: Sequence[str] = ()) -> FactorRow:
    return resolve(source_or_shipped(factors), key, region, year, fallback_regions)
