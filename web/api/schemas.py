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
