"""API v1 of carbon inclusion: the emission-factor table and the methodology calculators."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import calculators, factors
from registry.actors import Actor
from registry.errors import InvalidInput
from registry.factors import EmissionFactor
from web.api import schemas as s
from web.api.blueprint import bp
from web.api.core import endpoint, paginate


@endpoint(bp, "/emission-factors", summary="The emission-factor table: value, unit, region, year, source",
          tags=("carbon",), query=s.FactorsQuery, response=s.FactorOut, paginated=True)
def list_factors(session: Session, actor: Actor | None, *, query: dict[str, Any]) -> Any:
    stmt = select(EmissionFactor).order_by(EmissionFactor.key, EmissionFactor.region, EmissionFactor.year)
    if query.get("key"):
        stmt = stmt.where(EmissionFactor.key.startswith(query["key"]))
    if query.get("region"):
        stmt = stmt.where(EmissionFactor.region == query["region"])
    if query.get("year") is not None:
        stmt = stmt.where(EmissionFactor.year == query["year"])
    items, total = paginate(session, stmt, query["page"], query["per_page"])
    return items, total, query["page"], query["per_page"]


@endpoint(bp, "/emission-factors", "POST", summary="Operator adds a factor row (e.g. a new year)",
          tags=("operator",), auth=True, body=s.FactorCreate, response=s.FactorOut, status=201)
def create_factor(session: Session, actor: Actor, *, body: dict[str, Any]) -> Any:
    return factors.add_factor(session, actor, **body)


@endpoint(bp, "/methodologies/<code>/calculate", "POST",
          summary="Run a methodology's calculator: reduction in grams, formula and the factor rows cited",
          tags=("carbon",), body=s.CalculateRequest, response=s.CalculationOut)
def calculate(session: Session, actor: Actor | None, code: str, *, body: dict[str, Any]) -> Any:
    # Factors from the database: operator-added years count without a code change.
    try:
        return calculators.calculate(code, body["activity"], session).as_dict()
    except InvalidInput as e:
        raise InvalidInput(e.message, field=f"activity.{e.field}" if e.field else "activity", code=e.code) from None
