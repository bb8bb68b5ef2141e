"""marshmallow schemas: what the API accepts and returns. They also make the OpenAPI document."""

from __future__ import annotations

import datetime as dt
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from registry.models import (
    HolderKind,
    ProjectKind,
    ProjectStatus,
    RetirementPurpose,
    UserRole,
)


class UtcDateTime(fields.DateTime):
    """The database keeps naive UTC; the API says so explicitly (ISO 8601 with +00:00)."""

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> Any:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return super()._serialize(value, attr, obj, **kwargs)


def _strict_positive(**kw: Any) -> fields.Integer:
    return fields.Integer(strict=True, validate=validate.Range(min=1), **kw)


def _choice(enum: Any, **kw: Any) -> fields.String:
    return fields.String(validate=validate.OneOf([m.value for m in enum]), **kw)


# ---- requests ---------------------------------------------------------------------------------

class PageQuery(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class ProjectsQuery(PageQuery):
    methodology = fields.String(metadata={"description": "methodology code"})
    status = _choice(ProjectStatus)
    city = fields.String()
    vintage = fields.Integer(validate=validate.Range(min=1900, max=2200))
    kind = _choice(ProjectKind)


class RetirementsQuery(PageQuery):
    beneficiary = fields.String(metadata={"description": "substring of the beneficiary's name"})
    project_id = fields.Integer()


class LoginRequest(Schema):
    email = fields.Email(required=True)
    password = fields.String(required=True, validate=validate.Length(min=1, max=200))
    ttl_hours = fields.Integer(validate=validate.Range(min=1, max=24 * 365))


class DocumentIn(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    kind = fields.String(validate=validate.Length(max=64))
    sha256 = fields.String(validate=validate.Regexp(r"^[0-9a-f]{64}$"))
    url = fields.Url(require_tld=False)
    size = fields.Integer(strict=True, validate=validate.Range(min=0))


class ProjectCreate(Schema):
    kind = _choice(ProjectKind, load_default="project")
    title = fields.String(required=True, validate=validate.Length(min=1, max=200))
    title_en = fields.String(validate=validate.Length(max=200))
    description = fields.String(validate=validate.Length(max=5000))
    methodology_id = fields.Integer(strict=True, required=True)
    province = fields.String(required=True, validate=validate.Length(min=1, max=64))
    city = fields.String(required=True, validate=validate.Length(min=1, max=64))
    district = fields.String(validate=validate.Length(max=64))
    estimated_annual_kg = _strict_positive()
    documents = fields.List(fields.Nested(DocumentIn), load_default=list)
    external_ref = fields.String(validate=validate.Length(min=1, max=100))


class ReasonsRequest(Schema):
    reasons = fields.List(fields.String(validate=validate.Length(min=1, max=1000)), required=True,
                          validate=validate.Length(min=1))


class ReasonRequest(Schema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=1000))


class NoteRequest(Schema):
    note = fields.String(validate=validate.Length(max=2000))


class ReportCreate(Schema):
    period_start = fields.Date(required=True)
    period_end = fields.Date(required=True)
    claimed_kg = _strict_positive(required=True)
    external_ref = fields.String(validate=validate.Length(min=1, max=100))
    documents = fields.List(fields.Nested(DocumentIn), load_default=list)


class VerifyRequest(Schema):
    approved_kg = _strict_positive(required=True)
    note = fields.String(validate=validate.Length(max=2000))


class IssueRequest(Schema):
    external_ref = fields.String(validate=validate.Length(min=1, max=100))


class SelectionRequest(Schema):
    """Exactly one of quantity_kg (oldest vintage first) and serials (named ranges)."""

    quantity_kg = _strict_positive()
    serials = fields.List(fields.String(validate=validate.Length(min=1, max=100)),
                          validate=validate.Length(min=1, max=500))
    project_id = fields.Integer(strict=True)
    vintage = fields.Integer(strict=True, validate=validate.Range(min=1900, max=2200))

    @validates_schema
    def _one_of(self, data: dict[str, Any], **_: Any) -> None:
        if ("quantity_kg" in data) == ("serials" in data):
            raise ValidationError("give exactly one of quantity_kg and serials", "quantity_kg")


class TransferCreate(SelectionRequest):
    to_account = fields.String(required=True, validate=validate.Length(min=1, max=32))
    memo = fields.String(validate=validate.Length(max=500))


class RetirementCreate(SelectionRequest):
    beneficiary = fields.String(required=True, validate=validate.Length(min=1, max=200))
    jurisdiction = fields.String(required=True, validate=validate.Length(min=1, max=100),
                                 metadata={"description": "city or district where the claim is made, "
                                                          "e.g. 广东省深圳市南山区 or CN-GD-Shenzhen"})
    purpose = _choice(RetirementPurpose, required=True)
    footprint_ref = fields.String(validate=validate.Length(max=100))
    message = fields.String(validate=validate.Length(max=1000))


class CancellationCreate(SelectionRequest):
    from_account = fields.String(required=True, validate=validate.Length(min=1, max=32))
    reason = fields.String(required=True, validate=validate.Length(min=1, max=1000))


class HolderCreate(Schema):
    kind = _choice(HolderKind, required=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    name_en = fields.String(validate=validate.Length(max=200))
    credit_code = fields.String(validate=validate.Length(min=1, max=32))
    province = fields.String(validate=validate.Length(max=64))
    city = fields.String(validate=validate.Length(max=64))


class UserCreate(Schema):
    email = fields.Email(required=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    role = _choice(UserRole, load_default="viewer")
    password = fields.String(validate=validate.Length(min=8, max=200))


class MethodologyCreate(Schema):
    code = fields.String(required=True, validate=validate.Length(min=1, max=40))
    version = fields.String(required=True, validate=validate.Length(min=1, max=16))
    title_zh = fields.String(required=True, validate=validate.Length(min=1, max=200))
    title_en = fields.String(required=True, validate=validate.Length(min=1, max=200))
    sector = fields.String(required=True, validate=validate.Length(min=1, max=64))
    activity_unit = fields.String(required=True, validate=validate.Length(min=1, max=64))


# ---- responses --------------------------------------------------------------------------------

class AccountOut(Schema):
    number = fields.String()
    kind = fields.Function(lambda a: a.kind.value)


class HolderOut(Schema):
    id = fields.Integer()
    kind = fields.Function(lambda h: h.kind.value)
    name = fields.String()
    name_en = fields.String(allow_none=True)
    credit_code = fields.String(allow_none=True)
    province = fields.String(allow_none=True)
    city = fields.String(allow_none=True)
    suspended = fields.Boolean()
    suspension_reason = fields.String(allow_none=True)
    accounts = fields.List(fields.Nested(AccountOut))


class UserOut(Schema):
    id = fields.Integer()
    email = fields.String()
    name = fields.String()
    role = fields.Function(lambda u: u.role.value)
    holder = fields.Nested(HolderOut)


class LoginOut(Schema):
    token = fields.String(metadata={"description": "shown once; send as 'Authorization: Bearer <token>'"})
    user = fields.Nested(UserOut)


class MethodologyOut(Schema):
    id = fields.Integer()
    code = fields.String()
    version = fields.String()
    title_zh = fields.String()
    title_en = fields.String()
    sector = fields.String()
    activity_unit = fields.String()
    status = fields.String()


class ProjectOut(Schema):
    id = fields.Integer()
    code = fields.String()
    kind = fields.Function(lambda p: p.kind.value)
    title = fields.String()
    title_en = fields.String(allow_none=True)
    description = fields.String(allow_none=True)
    methodology = fields.Nested(MethodologyOut)
    owner = fields.Function(lambda p: {"id": p.owner.id, "name": p.owner.name, "kind": p.owner.kind.value})
    province = fields.String()
    city = fields.String()
    district = fields.String(allow_none=True)
    estimated_annual_kg = fields.Integer(allow_none=True)
    documents = fields.List(fields.Dict())
    external_ref = fields.String(allow_none=True)
    status = fields.Function(lambda p: p.status.value)
    status_reason = fields.String(allow_none=True)
    validated_by_id = fields.Integer(allow_none=True)
    suspended = fields.Boolean()
    suspension_reason = fields.String(allow_none=True)
    created_at = UtcDateTime()


class BatchOut(Schema):
    id = fields.Integer(attribute="batch.id")
    number = fields.Integer(attribute="batch.number")
    serial = fields.Function(lambda r: r["batch"].serial(1, r["batch"].quantity_kg))
    vintage = fields.Integer(attribute="batch.vintage")
    quantity_kg = fields.Integer(attribute="batch.quantity_kg")
    report_id = fields.Integer(attribute="batch.report_id")
    external_ref = fields.String(attribute="batch.external_ref", allow_none=True)
    issued_at = UtcDateTime(attribute="batch.issued_at")
    held_kg = fields.Integer()
    listed_kg = fields.Integer()
    retired_kg = fields.Integer()
    cancelled_kg = fields.Integer()


class ProjectDetailOut(ProjectOut):
    issuances = fields.List(fields.Nested(BatchOut))


class ReportOut(Schema):
    id = fields.Integer()
    project_id = fields.Integer()
    period_start = fields.Date()
    period_end = fields.Date()
    vintage = fields.Integer()
    claimed_kg = fields.Integer()
    approved_kg = fields.Integer(allow_none=True)
    status = fields.Function(lambda r: r.status.value)
    status_reason = fields.String(allow_none=True)
    external_ref = fields.String(allow_none=True)
    verifier_id = fields.Integer(allow_none=True)
    submitted_at = UtcDateTime()
    verified_at = UtcDateTime(allow_none=True)


class IssuanceOut(Schema):
    id = fields.Integer()
    project_id = fields.Integer()
    number = fields.Integer()
    report_id = fields.Integer()
    vintage = fields.Integer()
    quantity_kg = fields.Integer()
    serial = fields.Function(lambda b: b.serial(1, b.quantity_kg))
    external_ref = fields.String(allow_none=True)
    issued_at = UtcDateTime()


class SerialPieceOut(Schema):
    serial = fields.String()
    project_id = fields.Integer()
    project_title = fields.String()
    vintage = fields.Integer()
    methodology = fields.String()
    quantity_kg = fields.Integer()


class HoldingOut(Schema):
    project_id = fields.Integer()
    project_title = fields.String()
    vintage = fields.Integer()
    held_kg = fields.Integer()
    listed_kg = fields.Integer()


class BlockOut(Schema):
    id = fields.Integer()
    serial = fields.Function(lambda b: b.serial())
    project_id = fields.Integer()
    batch_number = fields.Function(lambda b: b.batch.number)
    vintage = fields.Integer()
    start = fields.Integer()
    end = fields.Integer()
    quantity_kg = fields.Integer(attribute="quantity")
    status = fields.Function(lambda b: b.status.value)
    account = fields.Function(lambda b: b.account.number)


class TransferOut(Schema):
    id = fields.Integer()
    from_account = fields.Function(lambda t: t["transfer"].from_account.number)
    to_account = fields.Function(lambda t: t["transfer"].to_account.number)
    quantity_kg = fields.Integer(attribute="transfer.quantity_kg")
    memo = fields.String(attribute="transfer.memo", allow_none=True)
    created_at = UtcDateTime(attribute="transfer.created_at")
    serials = fields.List(fields.Nested(SerialPieceOut))


class RetirementOut(Schema):
    certificate_number = fields.String()
    permalink = fields.String()
    beneficiary = fields.String()
    jurisdiction = fields.String()
    purpose = fields.String()
    quantity_kg = fields.Integer()
    footprint_ref = fields.String(allow_none=True)
    message = fields.String(allow_none=True)
    retired_by = fields.Dict()
    retired_at = UtcDateTime()
    serials = fields.List(fields.Nested(SerialPieceOut))


class CancellationOut(Schema):
    id = fields.Integer()
    from_account = fields.String()
    quantity_kg = fields.Integer()
    reason = fields.String()
    created_at = UtcDateTime()
    serials = fields.List(fields.Nested(SerialPieceOut))


class MovementOut(Schema):
    id = fields.Integer()
    kind = fields.String()
    serial = fields.String()
    quantity_kg = fields.Integer()
    from_account = fields.String(allow_none=True)
    to_account = fields.String()
    at = UtcDateTime()
    transfer_id = fields.Integer(allow_none=True)
    certificate_number = fields.String(allow_none=True)
    cancellation_id = fields.Integer(allow_none=True)


class SerialOut(Schema):
    serial = fields.String()
    project_id = fields.Integer()
    vintage = fields.Integer()
    batch_number = fields.Integer()
    methodology = fields.String()
    blocks = fields.List(fields.Nested(BlockOut))
    history = fields.List(fields.Nested(MovementOut))


class TokenOut(Schema):
    id = fields.Integer()
    prefix = fields.String()
    name = fields.String()
    created_at = UtcDateTime()
    expires_at = UtcDateTime(allow_none=True)
    revoked_at = UtcDateTime(allow_none=True)


# ---- exchange ---------------------------------------------------------------------------------

class InstrumentCreate(Schema):
    symbol = fields.String(required=True, validate=validate.Length(min=2, max=40))
    name_zh = fields.String(required=True, validate=validate.Length(min=1, max=200))
    name_en = fields.String(required=True, validate=validate.Length(min=1, max=200))
    kind = fields.String(required=True, validate=validate.OneOf(["pooled", "project"]))
    vintage_from = fields.Integer(strict=True, required=True)
    vintage_to = fields.Integer(strict=True, required=True)
    reference_price = _strict_positive(required=True, metadata={"description": "minor units per tonne"})
    project_id = fields.Integer(strict=True)
    project_kind = fields.String(validate=validate.OneOf(["project", "programme"]))
    sector = fields.String(validate=validate.Length(min=1, max=64))
    tick_size = _strict_positive()
    lot_size_kg = _strict_positive()
    min_qty_kg = _strict_positive()
    max_qty_kg = _strict_positive()
    band_bp = fields.Integer(strict=True, validate=validate.Range(min=1, max=9999))
    maker_fee_bp = fields.Integer(strict=True, validate=validate.Range(min=0, max=1000))
    taker_fee_bp = fields.Integer(strict=True, validate=validate.Range(min=0, max=1000))


class InstrumentOut(Schema):
    id = fields.Integer()
    symbol = fields.String()
    name_zh = fields.String()
    name_en = fields.String()
    kind = fields.Function(lambda i: i.kind.value)
    project_id = fields.Integer(allow_none=True)
    project_kind = fields.String(allow_none=True)
    sector = fields.String(allow_none=True)
    vintage_from = fields.Integer()
    vintage_to = fields.Integer()
    currency = fields.String()
    tick_size = fields.Integer()
    lot_size_kg = fields.Integer()
    min_qty_kg = fields.Integer()
    max_qty_kg = fields.Integer()
    band_bp = fields.Integer()
    maker_fee_bp = fields.Integer()
    taker_fee_bp = fields.Integer()
    reference_price = fields.Integer()
    band_low = fields.Integer()
    band_high = fields.Integer()
    blend_weights = fields.Dict(allow_none=True)
    status = fields.Function(lambda i: i.status.value)
    status_reason = fields.String(allow_none=True)


class DepthQuery(Schema):
    levels = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100))


class LevelOut(Schema):
    price = fields.Integer()
    qty_kg = fields.Integer()
    orders = fields.Integer()


class DepthOut(Schema):
    symbol = fields.String()
    bids = fields.List(fields.Nested(LevelOut))
    asks = fields.List(fields.Nested(LevelOut))


class TradeOut(Schema):
    id = fields.Integer()
    price = fields.Integer()
    qty_kg = fields.Integer()
    notional = fields.Integer()
    executed_at = UtcDateTime()


class FillOut(TradeOut):
    side = fields.String()
    role = fields.String(metadata={"description": "maker or taker"})
    fee = fields.Integer()


class OrderCreate(Schema):
    instrument = fields.String(required=True, validate=validate.Length(min=1, max=40))
    side = fields.String(required=True, validate=validate.OneOf(["buy", "sell"]))
    qty_kg = _strict_positive(required=True)
    order_type = fields.String(load_default="limit", validate=validate.OneOf(["limit", "market"]))
    price = _strict_positive(metadata={"description": "minor units per tonne; limit orders only"})
    tif = fields.String(validate=validate.OneOf(["GTC", "DAY", "GTD", "IOC", "FOK"]))
    expire_at = fields.AwareDateTime(default_timezone=dt.UTC)
    post_only = fields.Boolean(load_default=False)
    stp = fields.String(load_default="cancel_newest",
                        validate=validate.OneOf(["cancel_newest", "cancel_oldest", "cancel_both", "decrement"]))


class ReduceRequest(Schema):
    by_kg = _strict_positive(required=True)


class ReplaceRequest(Schema):
    price = _strict_positive(required=True)


class OrderOut(Schema):
    id = fields.Integer()
    instrument = fields.String()
    side = fields.String()
    order_type = fields.String()
    tif = fields.String()
    price = fields.Integer(allow_none=True)
    qty_kg = fields.Integer()
    filled_kg = fields.Integer()
    remaining_kg = fields.Integer()
    status = fields.String()
    reason = fields.String(allow_none=True)
    post_only = fields.Boolean()
    stp = fields.String()
    expire_at = UtcDateTime(allow_none=True)
    cash_held = fields.Integer()
    notional_paid = fields.Integer()
    fees_paid = fields.Integer()
    created_at = UtcDateTime()
    updated_at = UtcDateTime()
    fills = fields.List(fields.Nested(FillOut))
    pending_commands = fields.Integer(metadata={"description": "commands not yet applied by the engine"})


class OrdersQuery(PageQuery):
    status = fields.String(validate=validate.OneOf(["pending", "open", "filled", "cancelled", "expired",
                                                    "rejected", "active"]))
    instrument = fields.String()


class WalletOut(Schema):
    currency = fields.String()
    available = fields.Integer()
    held = fields.Integer()
    total = fields.Integer()
    entries = fields.List(fields.Dict())


class DepositCreate(Schema):
    holder_id = fields.Integer(strict=True, required=True)
    amount = _strict_positive(required=True, metadata={"description": "minor units (fen)"})
    external_ref = fields.String(validate=validate.Length(min=1, max=100))
    memo = fields.String(validate=validate.Length(max=500))


class DepositOut(Schema):
    id = fields.Integer()
    holder_id = fields.Integer()
    amount = fields.Integer()
    currency = fields.String()
    external_ref = fields.String(allow_none=True)
    created_at = UtcDateTime()


class WithdrawalCreate(Schema):
    amount = _strict_positive(required=True)
    bank_reference = fields.String(validate=validate.Length(max=100))


class WithdrawalDecision(Schema):
    reason = fields.String(validate=validate.Length(min=1, max=1000))


class WithdrawalOut(Schema):
    id = fields.Integer()
    holder_id = fields.Integer()
    amount = fields.Integer()
    currency = fields.String()
    bank_reference = fields.String(allow_none=True)
    status = fields.Function(lambda w: w.status.value)
    reason = fields.String(allow_none=True)
    created_at = UtcDateTime()
    decided_at = UtcDateTime(allow_none=True)


class StatusChange(Schema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=1000))


class TodayOut(Schema):
    trading_day = fields.String()
    volume_kg = fields.Integer()
    turnover = fields.Integer()
    trade_count = fields.Integer()
    open = fields.Integer(allow_none=True)
    high = fields.Integer(allow_none=True)
    low = fields.Integer(allow_none=True)
    vwap = fields.Integer(allow_none=True)


class InstrumentSummaryOut(Schema):
    id = fields.Integer()
    symbol = fields.String()
    name_zh = fields.String()
    name_en = fields.String()
    kind = fields.String()
    status = fields.String()
    currency = fields.String()
    vintage_from = fields.Integer()
    vintage_to = fields.Integer()
    tick_size = fields.Integer()
    lot_size_kg = fields.Integer()
    min_qty_kg = fields.Integer()
    max_qty_kg = fields.Integer()
    fees_bp = fields.Dict(keys=fields.String(), values=fields.Integer())
    reference_price = fields.Integer()
    reference_day = fields.String(allow_none=True)
    band_low = fields.Integer()
    band_high = fields.Integer()
    band_bp = fields.Integer()
    blend_weights = fields.Dict(allow_none=True)
    last_price = fields.Integer(allow_none=True)
    last_trade_at = fields.String(allow_none=True)
    change = fields.Integer(allow_none=True)
    change_bp = fields.Integer(allow_none=True)
    today = fields.Nested(TodayOut)
    best_bid = fields.Integer(allow_none=True)
    best_ask = fields.Integer(allow_none=True)


class HistoryQuery(Schema):
    days = fields.Integer(load_default=90, validate=validate.Range(min=1, max=3660))


class DailyOut(Schema):
    trading_day = fields.String()
    open = fields.Integer(allow_none=True)
    high = fields.Integer(allow_none=True)
    low = fields.Integer(allow_none=True)
    close = fields.Integer()
    vwap = fields.Integer(allow_none=True)
    volume_kg = fields.Integer()
    turnover = fields.Integer()
    trade_count = fields.Integer()
    reference_price = fields.Integer()
    previous_reference = fields.Integer()
    change = fields.Integer()
    change_bp = fields.Integer()
    band_low = fields.Integer()
    band_high = fields.Integer()
    method = fields.String()


class ReferenceOut(Schema):
    trading_day = fields.String()
    reference_price = fields.Integer()
    method = fields.String()
    close = fields.Integer()
    vwap = fields.Integer(allow_none=True)
    previous_reference = fields.Integer()
    band_low = fields.Integer()
    band_high = fields.Integer()
    weights = fields.Dict(allow_none=True)
    inputs = fields.Dict()
    computed_at = fields.String()


class ExternalIndexQuery(Schema):
    code = fields.String(validate=validate.OneOf(["CEA", "CCER", "cea", "ccer"]))


class ExternalIndexIn(Schema):
    code = fields.String(required=True, validate=validate.OneOf(["CEA", "CCER"]))
    trading_day = fields.Date(required=True)
    price = _strict_positive(required=True, metadata={"description": "minor units per tonne"})
    source = fields.String(required=True, validate=validate.Length(min=1, max=200))


class ExternalIndexOut(Schema):
    code = fields.String()
    trading_day = fields.String()
    price = fields.Integer()
    source = fields.String()
    entered_at = fields.String()


class BlendIn(Schema):
    weights = fields.Dict(keys=fields.String(), values=fields.Integer(strict=True), required=True,
                          allow_none=True, metadata={"description": "basis points adding up to 10,000, "
                                                                    "e.g. {\"vwap\": 6000, \"CEA\": 2000, \"CCER\": 2000}"})


# ---- carbon inclusion -------------------------------------------------------------------------

class FactorsQuery(PageQuery):
    key = fields.String(metadata={"description": "prefix of the factor key, e.g. grid. or transport."})
    region = fields.String()
    year = fields.Integer()


class FactorOut(Schema):
    id = fields.Integer()
    key = fields.String()
    value = fields.String(metadata={"description": "exact decimal text"})
    unit = fields.String()
    gas_basis = fields.String()
    region = fields.String()
    year = fields.Integer()
    source = fields.String()
    valid_from = fields.Date(allow_none=True)
    valid_to = fields.Date(allow_none=True)
    origin = fields.String()


class FactorCreate(Schema):
    key = fields.String(required=True, validate=validate.Length(min=1, max=80))
    value = fields.String(required=True, validate=validate.Regexp(r"^-?\d+(\.\d+)?$"),
                          metadata={"description": "exact decimal text, e.g. \"0.5306\""})
    unit = fields.String(required=True, validate=validate.Length(min=1, max=40))
    gas_basis = fields.String(required=True, validate=validate.OneOf(["CO2", "CO2e"]))
    region = fields.String(required=True, validate=validate.Length(min=1, max=32))
    year = fields.Integer(strict=True, required=True, validate=validate.Range(min=1990, max=2200))
    source = fields.String(required=True, validate=validate.Length(min=1, max=1000))
    valid_from = fields.Date()
    valid_to = fields.Date()


class CalculateRequest(Schema):
    activity = fields.Dict(required=True, metadata={"description": "the methodology's activity data"})


class CalculationOut(Schema):
    methodology = fields.String()
    reduction_g = fields.Integer()
    baseline_g = fields.Integer()
    project_g = fields.Integer()
    leakage_g = fields.Integer()
    withheld_g = fields.Integer()
    issuable_g = fields.Integer()
    clamped = fields.Boolean()
    formula = fields.String()
    factors = fields.List(fields.Dict())
    inputs = fields.Dict()
    notes = fields.List(fields.String())
