"""marshmallow schemas of footprints, offset listings and offset orders."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from exchange.offset_models import FootprintKind, OffsetStatus
from web.api.schemas import PageQuery, UtcDateTime


class FootprintCreate(Schema):
    kind = fields.String(required=True, validate=validate.OneOf([k.value for k in FootprintKind]))
    inputs = fields.Dict(required=True, metadata={
        "description": "name, region (e.g. CN-GD), year, and the activities of the kind (see the docs)"})
    reductions = fields.List(fields.String(validate=validate.Length(min=1, max=2000)),
                             metadata={"description": "the organiser's notes on reductions made first"})


class ReductionsIn(Schema):
    reductions = fields.List(fields.String(validate=validate.Length(min=1, max=2000)), required=True)


class FootprintOut(Schema):
    id = fields.Integer()
    kind = fields.String()
    name = fields.String()
    region = fields.String()
    year = fields.Integer()
    inputs = fields.Dict()
    lines = fields.List(fields.Dict(), metadata={
        "description": "scope, activity, quantity and unit, the factor row cited, exact kg and grams"})
    exact_kg = fields.String()
    total_kg = fields.Integer()
    rounding = fields.String()
    reductions = fields.List(fields.String())
    created_at = UtcDateTime()


class ListingCreate(Schema):
    project_id = fields.Integer(strict=True, required=True)
    vintage = fields.Integer(strict=True, required=True)
    quantity_kg = fields.Integer(strict=True, required=True, validate=validate.Range(min=1))
    price = fields.Integer(strict=True, required=True, validate=validate.Range(min=1),
                           metadata={"description": "minor units per tonne"})


class ListingOut(Schema):
    id = fields.Integer()
    seller_id = fields.Integer()
    project_id = fields.Integer()
    vintage = fields.Integer()
    price = fields.Integer()
    fee_bp = fields.Integer()
    quantity_kg = fields.Integer()
    available_kg = fields.Integer()
    status = fields.String()
    created_at = UtcDateTime()


class Preference(Schema):
    instrument = fields.String(metadata={"description": "an instrument symbol"})
    project_type = fields.String(metadata={"description": "project kind (project, programme) or methodology "
                                                          "sector (energy, transport, forestry...)"})
    vintage = fields.Integer(strict=True)
    cheapest = fields.Boolean()
    source = fields.String(validate=validate.OneOf(["listing", "exchange"]),
                           metadata={"description": "fill from a fixed-price listing (default) or the order book"})


class OffsetCreate(Schema):
    quantity_kg = fields.Integer(strict=True, validate=validate.Range(min=1))
    footprint_id = fields.Integer(strict=True)
    beneficiary = fields.String(required=True, validate=validate.Length(min=1, max=200))
    message = fields.String(validate=validate.Length(max=2000))
    jurisdiction = fields.String(validate=validate.Length(min=1, max=100))
    preference = fields.Nested(Preference, load_default=dict)
    payment = fields.String(load_default="wallet", validate=validate.OneOf(["wallet", "card"]))
    # JSON true or false only ("yes", "1" would move money by accident)
    confirm = fields.Boolean(load_default=False, truthy={True}, falsy={False}, metadata={
        "description": "true: place and complete the order at once (wallet payment only): quoted, paid from the "
                       "wallet, filled and retired in one transaction; the answer is the order as it ends, retired "
                       "with its certificate or refunded with the reason. false (default): a draft quote to confirm "
                       "with POST /offsets/{id}/confirm"})

    @validates_schema
    def _one_of(self, data: dict[str, object], **_: object) -> None:
        if "quantity_kg" not in data and "footprint_id" not in data:
            raise ValidationError("give quantity_kg or footprint_id (or both: part of a footprint)",
                                  field_name="quantity_kg")


class CancelIn(Schema):
    reason = fields.String(validate=validate.Length(min=1, max=500))


class OffsetsQuery(PageQuery):
    status = fields.String(validate=validate.OneOf([s.value for s in OffsetStatus]))


class OffsetOut(Schema):
    id = fields.Integer()
    status = fields.String()
    reason = fields.String(allow_none=True)
    resume_attempts = fields.Integer(metadata={"description": "how often the resume job failed to finish it"})
    resume_error = fields.String(allow_none=True, metadata={"description": "why the resume job last failed"})
    quantity_kg = fields.Integer()
    footprint_id = fields.Integer(allow_none=True)
    beneficiary = fields.String()
    message = fields.String(allow_none=True)
    jurisdiction = fields.String()
    purpose = fields.String()
    preference = fields.Dict()
    payment = fields.String()
    source = fields.String()
    listing_id = fields.Integer(allow_none=True)
    instrument = fields.String(allow_none=True)
    quote = fields.Dict(metadata={"description": "price per tonne, notional, fee and total (minor units)"})
    expires_at = UtcDateTime()
    paid_amount = fields.Integer()
    refunded_amount = fields.Integer()
    filled_kg = fields.Integer()
    exchange_order_id = fields.Integer(allow_none=True)
    certificate_number = fields.String(allow_none=True)
    certificate = fields.Dict(allow_none=True, metadata={"description": "links to the signed JSON, PDF and page"})
    card_payment = fields.Dict(allow_none=True, metadata={
        "description": "a card order's payment (as /payments/{id}): status, client_secret and publishable_key "
                       "for Stripe.js while it can be paid, failure, refunds to the card"})
    created_at = UtcDateTime()
    paid_at = UtcDateTime(allow_none=True)
    filled_at = UtcDateTime(allow_none=True)
    retired_at = UtcDateTime(allow_none=True)


class NeutralityOut(Schema):
    footprint = fields.Dict()
    neutral = fields.Boolean()
    footprint_kg = fields.Integer()
    retired_kg = fields.Integer()
    uncovered_kg = fields.Integer()
    reductions = fields.List(fields.String())
    retirements = fields.List(fields.Dict())
    statement = fields.String()
