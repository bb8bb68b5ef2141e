"""Methodologies: code + version, bilingual title, sector, unit of activity.

Calculators plug in here: `register_calculator(code)` binds a function that turns activity data
into a reduction (grams) for a methodology code; the carbon-inclusion work adds them. A methodology
without a calculator can still carry projects whose monitoring reports state their quantity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import audit
from registry.actors import Actor
from registry.errors import Conflict, InvalidInput
from registry.models import HolderKind, Methodology

Calculator = Callable[[dict[str, Any]], Any]
CALCULATORS: dict[str, Calculator] = {}


def register_calculator(code: str) -> Callable[[Calculator], Calculator]:
    def bind(fn: Calculator) -> Calculator:
        CALCULATORS[code] = fn
        return fn
    return bind


def calculator_for(code: str) -> Calculator | None:
    return CALCULATORS.get(code)


def create_methodology(session: Session, actor: Actor | None, *, code: str, version: str,
                       title_zh: str, title_en: str, sector: str, activity_unit: str) -> Methodology:
    """Operator only (actor None for the seed). (code, version) is unique."""
    if actor is not None:
        actor.require_kind(HolderKind.OPERATOR)
    for field, value in (("code", code), ("version", version), ("title_zh", title_zh),
                         ("title_en", title_en), ("sector", sector), ("activity_unit", activity_unit)):
        if not value or not str(value).strip():
            raise InvalidInput(f"{field} is required", field=field)
    if "-" in version or " " in code:
        raise InvalidInput("code has no spaces and version no dashes", field="version")
    if session.scalar(select(Methodology.id).where(Methodology.code == code,
                                                    Methodology.version == version)):
        raise Conflict(f"methodology {code} v{version} exists", field="code", code="duplicate")
    m = Methodology(code=code, version=version, title_zh=title_zh, title_en=title_en, sector=sector,
                    activity_unit=activity_unit, status="active")
    session.add(m)
    session.flush()
    audit.record(session, actor, "methodology.created", "methodology", m.id,
                 {"code": code, "version": version, "sector": sector})
    return m
