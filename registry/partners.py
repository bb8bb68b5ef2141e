"""Behaviour partners and programme members.

A **partner** (transit operator, bike share, utility, sorting station) reports residents' low-carbon
behaviour into one programme. Operators register it with the behaviour types (methodology codes or
engagement actions) it may report; it signs every batch with HMAC-SHA256 under its secret.

HMAC verification needs the secret itself (unlike a password, a hash of it cannot check a MAC), so the
secret is stored as generated and shown once, at registration or rotation; no read path returns it.

A **member** is a resident user enrolled in a programme with a city, district and community; partners
may know the member under their own external user id (card number, app account).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    String,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from registry import audit
from registry.actors import Actor
from registry.behaviour_rules import BEHAVIOUR_TYPES
from registry.db import Base, utcnow
from registry.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from registry.models import HolderKind, Project, ProjectKind, User

PARTNER_KINDS = ("transit", "bike_share", "utility", "sorting_station", "other")
SIGNATURE_TOLERANCE_S = 300
_CODE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{1,39}$")
_REGION_RE = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,8})*$")


class Partner(Base):
    __tablename__ = "behaviour_partners"
    __table_args__ = (
        CheckConstraint("kind IN ('transit', 'bike_share', 'utility', 'sorting_station', 'other')",
                        name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    programme_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    region: Mapped[str] = mapped_column(String(32))   # factor region of its activity, e.g. CN-GD-SZ
    secret: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class PartnerBehaviourType(Base):
    __tablename__ = "behaviour_partner_types"
    __table_args__ = (UniqueConstraint("partner_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("behaviour_partners.id"))
    code: Mapped[str] = mapped_column(String(16))


class Member(Base):
    """A resident enrolled in a programme. `reduction_g` is the member's running record of accepted
    reductions in grams (the points carry is derived from it); `check_ledger` proves it against the
    events."""

    __tablename__ = "behaviour_members"
    __table_args__ = (
        UniqueConstraint("programme_id", "user_id"),
        CheckConstraint("reduction_g >= 0", name="reduction_nonnegative"),
    )
    # On PostgreSQL the migration leaves room on each page (fillfactor 70) so that the update of
    # reduction_g when a batch is settled (`registry.behaviour.settle`) is a HOT update (no index
    # touched). Behind by the grams of batches not yet settled (`BehaviourBatch.members_upto`).

    id: Mapped[int] = mapped_column(primary_key=True)
    programme_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    city: Mapped[str] = mapped_column(String(64))
    district: Mapped[str | None] = mapped_column(String(64))
    community: Mapped[str | None] = mapped_column(String(100))
    reduction_g: Mapped[int] = mapped_column(BigInteger, default=0)
    enrolled_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class MemberExternalId(Base):
    __tablename__ = "behaviour_external_ids"
    __table_args__ = (UniqueConstraint("partner_id", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("behaviour_partners.id"))
    external_id: Mapped[str] = mapped_column(String(64))
    member_id: Mapped[int] = mapped_column(ForeignKey("behaviour_members.id"), index=True)


def _programme(session: Session, programme_id: int) -> Project:
    programme = session.get(Project, programme_id)
    if programme is None or programme.kind is not ProjectKind.PROGRAMME:
        raise NotFound(f"no programme {programme_id}", field="programme_id")
    return programme


def register_partner(session: Session, actor: Actor, *, code: str, name: str, kind: str,
                     programme_id: int, region: str, behaviour_types: list[str]) -> tuple[Partner, str]:
    """Operator only. Returns the partner and its HMAC secret, which is shown only now."""
    actor.require_kind(HolderKind.OPERATOR)
    code = (code or "").strip().lower()
    if not _CODE_RE.match(code):
        raise InvalidInput("code: 2-40 of a-z, 0-9, _ and -, starting with a letter or digit", field="code")
    if not name or not name.strip():
        raise InvalidInput("name is required", field="name")
    if kind not in PARTNER_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(PARTNER_KINDS)}", field="kind")
    if not region or not _REGION_RE.match(region):
        raise InvalidInput("region must be a factor region such as CN-GD-SZ", field="region")
    types = sorted(set(behaviour_types or []))
    if not types:
        raise InvalidInput("a partner reports at least one behaviour type", field="behaviour_types")
    for t in types:
        if t not in BEHAVIOUR_TYPES:
            raise InvalidInput(f"unknown behaviour type {t!r} (known: {', '.join(BEHAVIOUR_TYPES)})",
                               field="behaviour_types")
    _programme(session, programme_id)
    if session.scalar(select(Partner.id).where(Partner.code == code)):
        raise Conflict(f"a partner {code} exists", field="code", code="duplicate")
    secret = secrets.token_hex(32)
    partner = Partner(code=code, name=name.strip(), kind=kind, programme_id=programme_id, region=region,
                      secret=secret, active=True)
    session.add(partner)
    session.flush()
    for t in types:
        session.add(PartnerBehaviourType(partner_id=partner.id, code=t))
    session.flush()
    audit.record(session, actor, "behaviour.partner_registered", "behaviour_partner", partner.id,
                 {"code": code, "kind": kind, "programme_id": programme_id, "region": region,
                  "behaviour_types": types})
    return partner, secret


def rotate_secret(session: Session, actor: Actor, partner_id: int) -> str:
    """Operator only: a new secret (shown only now); the old one stops verifying at once."""
    actor.require_kind(HolderKind.OPERATOR)
    partner = session.get(Partner, partner_id, with_for_update=True)
    if partner is None:
        raise NotFound(f"no partner {partner_id}", field="partner_id")
    partner.secret = secrets.token_hex(32)
    audit.record(session, actor, "behaviour.partner_secret_rotated", "behaviour_partner", partner.id, {})
    return partner.secret


def partner_by_code(session: Session, code: str) -> Partner:
    partner = session.scalar(select(Partner).where(Partner.code == (code or "").strip().lower()))
    if partner is None:
        raise NotFound(f"no partner {code!r}", field="partner")
    return partner


def allowed_types(session: Session, partner_id: int) -> frozenset[str]:
    return frozenset(session.scalars(select(PartnerBehaviourType.code)
                                     .where(PartnerBehaviourType.partner_id == partner_id)))


def enrol_member(session: Session, actor: Actor | None, *, programme_id: int, user_id: int, city: str,
                 district: str | None = None, community: str | None = None,
                 external_ids: dict[str, str] | None = None) -> Member:
    """Enrol a user in a programme (operator, the user themself, or None for seeds and imports), with
    optional external ids keyed by partner code. Opens the user's points account."""
    from registry.points import ensure_account

    if actor is not None and not actor.is_operator and actor.user_id != user_id:
        raise NotFound(f"no user {user_id}", field="user_id")
    _programme(session, programme_id)
    if session.get(User, user_id) is None:
        raise NotFound(f"no user {user_id}", field="user_id")
    if not city or not city.strip():
        raise InvalidInput("city is required", field="city")
    if session.scalar(select(Member.id).where(Member.programme_id == programme_id, Member.user_id == user_id)):
        raise Conflict("the user is already enrolled in this programme", field="user_id", code="duplicate")
    member = Member(programme_id=programme_id, user_id=user_id, city=city.strip(), district=district,
                    community=community, reduction_g=0)
    session.add(member)
    session.flush()
    for partner_code, external_id in (external_ids or {}).items():
        link_external_id(session, actor, member, partner_code, external_id)
    ensure_account(session, user_id)
    audit.record(session, actor, "behaviour.member_enrolled", "behaviour_member", member.id,
                 {"programme_id": programme_id, "user_id": user_id, "city": member.city,
                  "district": district, "community": community})
    return member


def link_external_id(session: Session, actor: Actor | None, member: Member, partner_code: str,
                     external_id: str) -> MemberExternalId:
    partner = partner_by_code(session, partner_code)
    if partner.programme_id != member.programme_id:
        raise InvalidInput(f"partner {partner.code} reports into another programme", field="external_ids")
    external_id = (external_id or "").strip()
    if not external_id or len(external_id) > 64:
        raise InvalidInput("an external id is 1-64 characters", field="external_ids")
    if session.scalar(select(MemberExternalId.id).where(MemberExternalId.partner_id == partner.id,
                                                        MemberExternalId.external_id == external_id)):
        raise Conflict(f"{partner.code} already maps {external_id!r}", field="external_ids", code="duplicate")
    link = MemberExternalId(partner_id=partner.id, external_id=external_id, member_id=member.id)
    session.add(link)
    session.flush()
    audit.record(session, actor, "behaviour.external_id_linked", "behaviour_member", member.id,
                 {"partner": partner.code, "external_id": external_id})
    return link


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for `body` sent at unix `timestamp`:
    `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class SignatureCheck:
    """Verifies a signature header over a body fed in pieces (the body is never held whole).

    The MAC covers the timestamp, so an old signature cannot be re-dated; a timestamp more than
    `tolerance_s` away from `now` is refused (a captured request cannot be replayed later)."""

    def __init__(self, secret: str, header: str | None, now: float,
                 tolerance_s: int = SIGNATURE_TOLERANCE_S) -> None:
        parts = dict(p.split("=", 1) for p in (header or "").split(",") if "=" in p)
        try:
            self.timestamp = int(parts.get("t", ""))
        except ValueError:
            raise Unauthenticated("signature header must be t=<unix time>,v1=<hex>",
                                  field="X-Tanhui-Signature", code="bad_signature") from None
        self.given = parts.get("v1", "")
        if not self.given:
            raise Unauthenticated("signature header must be t=<unix time>,v1=<hex>",
                                  field="X-Tanhui-Signature", code="bad_signature")
        if abs(now - self.timestamp) > tolerance_s:
            raise Unauthenticated(f"signature timestamp is more than {tolerance_s} s from now",
                                  field="X-Tanhui-Signature", code="stale_signature")
        self.mac = hmac.new(secret.encode(), str(self.timestamp).encode() + b".", hashlib.sha256)

    def update(self, piece: bytes) -> None:
        self.mac.update(piece)

    def verify(self) -> None:
        if not hmac.compare_digest(self.mac.hexdigest(), self.given.lower()):
            raise Unauthenticated("signature does not match the body", field="X-Tanhui-Signature",
                                  code="bad_signature")


# -- deactivation --------------------------------------------------------------------------------


def get_partner(session: Session, partner_id: int, *, lock: bool = False) -> Partner:
    partner = session.get(Partner, partner_id, with_for_update=lock or None)
    if partner is None:
        raise NotFound(f"no partner {partner_id}", field="partner_id")
    return partner


def deactivate_partner(session: Session, actor: Actor, partner_id: int, reason: str) -> Partner:
    """Operator only, with a reason: the partner's batches are refused from now on, whatever their
    signature (the API answers 403 `partner_inactive`; a CSV import is refused); its rows already
    recorded stay. A batch already being imported finishes. Raises NotFound (partner_id), InvalidInput
    (reason), Conflict `no_change` (field partner_id) if it is inactive already. The caller commits."""
    actor.require_kind(HolderKind.OPERATOR)
    if not reason or not reason.strip():
        raise InvalidInput("a reason is required", field="reason")
    partner = get_partner(session, partner_id, lock=True)
    if not partner.active:
        raise Conflict(f"partner {partner.code} is already inactive", field="partner_id", code="no_change")
    partner.active = False
    audit.record(session, actor, "behaviour.partner_deactivated", "behaviour_partner", partner.id,
                 {"code": partner.code, "reason": reason.strip()})
    return partner


def reactivate_partner(session: Session, actor: Actor, partner_id: int, *, rotate: bool = False,
                       reason: str | None = None) -> tuple[Partner, str | None]:
    """Operator only: the partner's batches are accepted again. With `rotate` its secret is replaced
    in the same transaction (returned, shown only now; the old one never verifies again), which is
    what to do after a leaked secret; else (partner, None). Raises NotFound (partner_id), Conflict
    `no_change` if it is active. The caller commits."""
    actor.require_kind(HolderKind.OPERATOR)
    partner = get_partner(session, partner_id, lock=True)
    if partner.active:
        raise Conflict(f"partner {partner.code} is already active", field="partner_id", code="no_change")
    partner.active = True
    secret = None
    if rotate:
        partner.secret = secret = secrets.token_hex(32)
    audit.record(session, actor, "behaviour.partner_reactivated", "behaviour_partner", partner.id,
                 {"code": partner.code, "secret_rotated": rotate, "reason": (reason or "").strip() or None})
    return partner, secret


def list_partners(session: Session, programme_id: int | None = None) -> list[Partner]:
    stmt = select(Partner).order_by(Partner.id)
    if programme_id is not None:
        stmt = stmt.where(Partner.programme_id == programme_id)
    return list(session.scalars(stmt))
