"""The registry's tables as SQLAlchemy 2 typed models.

Quantities are integer kilograms of CO2e. Behaviour on the objects stays free of sessions and
queries (see CONVENTIONS.md); the queries live in the use-case modules.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from registry.db import Base, BigKey, str_enum, utcnow


class HolderKind(enum.StrEnum):
    INDIVIDUAL = "individual"
    ENTERPRISE = "enterprise"
    AGENCY = "agency"
    EVENT_ORGANISER = "event_organiser"
    VERIFIER = "verifier"
    MERCHANT = "merchant"
    OPERATOR = "operator"


class AccountKind(enum.StrEnum):
    HOLDING = "holding"
    RETIREMENT = "retirement"
    CANCELLATION = "cancellation"


class UserRole(enum.StrEnum):
    """A user's rights within its holder: admin does everything, trader moves units, viewer reads."""

    ADMIN = "admin"
    TRADER = "trader"
    VIEWER = "viewer"


class ProjectKind(enum.StrEnum):
    PROJECT = "project"        # a small enterprise's project
    PROGRAMME = "programme"    # aggregated public behaviour


class ProjectStatus(enum.StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    VALIDATED = "validated"
    REGISTERED = "registered"
    REJECTED = "rejected"


class ReportStatus(enum.StrEnum):
    SUBMITTED = "submitted"
    VERIFIED = "verified"
    REJECTED = "rejected"
    ISSUED = "issued"


class BlockStatus(enum.StrEnum):
    HELD = "held"
    LISTED = "listed"
    RETIRED = "retired"
    CANCELLED = "cancelled"


class MovementKind(enum.StrEnum):
    ISSUANCE = "issuance"
    TRANSFER = "transfer"
    RETIREMENT = "retirement"
    CANCELLATION = "cancellation"


class RetirementPurpose(enum.StrEnum):
    EVENT_OFFSET = "event_offset"
    ORGANISATIONAL = "organisational"
    PERSONAL = "personal"
    OTHER = "other"


class Holder(Base):
    __tablename__ = "holders"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[HolderKind] = mapped_column(str_enum(HolderKind, "holder_kind"))
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str | None] = mapped_column(String(200))
    # 统一社会信用代码 for organisations; unique when given.
    credit_code: Mapped[str | None] = mapped_column(String(32), unique=True)
    province: Mapped[str | None] = mapped_column(String(64))
    city: Mapped[str | None] = mapped_column(String(64))
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    suspension_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    accounts: Mapped[list[Account]] = relationship(back_populates="holder", order_by="Account.id")


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (UniqueConstraint("holder_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    kind: Mapped[AccountKind] = mapped_column(str_enum(AccountKind, "account_kind"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    holder: Mapped[Holder] = relationship(back_populates="accounts")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[UserRole] = mapped_column(str_enum(UserRole, "user_role"))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    holder: Mapped[Holder] = relationship()


class ApiToken(Base):
    """A bearer token. Only its SHA-256 is stored; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    user: Mapped[User] = relationship()


class Methodology(Base):
    __tablename__ = "methodologies"
    __table_args__ = (UniqueConstraint("code", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40))
    version: Mapped[str] = mapped_column(String(16))
    title_zh: Mapped[str] = mapped_column(String(200))
    title_en: Mapped[str] = mapped_column(String(200))
    sector: Mapped[str] = mapped_column(String(64))
    activity_unit: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Project(Base):
    """An enterprise project or a public-behaviour programme; both share one lifecycle."""

    __tablename__ = "projects"
    __table_args__ = (Index("ix_projects_status_city", "status", "city"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[ProjectKind] = mapped_column(str_enum(ProjectKind, "project_kind"))
    title: Mapped[str] = mapped_column(String(200))
    title_en: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    methodology_id: Mapped[int] = mapped_column(ForeignKey("methodologies.id"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    province: Mapped[str] = mapped_column(String(64))
    city: Mapped[str] = mapped_column(String(64))
    district: Mapped[str | None] = mapped_column(String(64))
    estimated_annual_kg: Mapped[int | None] = mapped_column(BigInteger)
    documents: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    external_ref: Mapped[str | None] = mapped_column(String(100), unique=True)
    status: Mapped[ProjectStatus] = mapped_column(str_enum(ProjectStatus, "project_status"),
                                                  default=ProjectStatus.DRAFT)
    status_reason: Mapped[str | None] = mapped_column(Text)
    validated_by_id: Mapped[int | None] = mapped_column(ForeignKey("holders.id"))
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    suspension_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    methodology: Mapped[Methodology] = relationship()
    owner: Mapped[Holder] = relationship(foreign_keys=[owner_id])

    @property
    def code(self) -> str:
        """The project's code in serial numbers: its id, zero-padded, with no dash."""
        return project_code(self.id)


class MonitoringReport(Base):
    __tablename__ = "monitoring_reports"
    __table_args__ = (
        CheckConstraint("claimed_kg > 0", name="claimed_positive"),
        CheckConstraint("approved_kg IS NULL OR (approved_kg > 0 AND approved_kg <= claimed_kg)",
                        name="approved_within_claim"),
        CheckConstraint("period_start <= period_end", name="period_order"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    period_start: Mapped[dt.date] = mapped_column(Date)
    period_end: Mapped[dt.date] = mapped_column(Date)
    claimed_kg: Mapped[int] = mapped_column(BigInteger)
    approved_kg: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[ReportStatus] = mapped_column(str_enum(ReportStatus, "report_status"),
                                                 default=ReportStatus.SUBMITTED)
    status_reason: Mapped[str | None] = mapped_column(Text)
    external_ref: Mapped[str | None] = mapped_column(String(100), unique=True)
    documents: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    verifier_id: Mapped[int | None] = mapped_column(ForeignKey("holders.id"))
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    verified_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    project: Mapped[Project] = relationship()

    @property
    def vintage(self) -> int:
        """The vintage of a period is the year in which it ends."""
        return self.period_end.year


def project_code(project_id: int) -> str:
    """`Project.code` from the project's id (without loading the project)."""
    return f"{project_id:05d}"


def serial_prefix(project_id: int, vintage: int, batch_number: int) -> str:
    """The serial text of a batch before its range: `THR-<project>-<vintage>-<batch>` (DESIGN.md)."""
    return f"THR-{project_id:05d}-{vintage}-{batch_number}"


class Batch(Base):
    """One issuance: the credits of one verified monitoring report, serials [1, quantity_kg]."""

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("project_id", "number"),
        CheckConstraint("quantity_kg > 0", name="quantity_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    report_id: Mapped[int] = mapped_column(ForeignKey("monitoring_reports.id"), unique=True)
    methodology_id: Mapped[int] = mapped_column(ForeignKey("methodologies.id"))
    vintage: Mapped[int] = mapped_column(Integer)
    quantity_kg: Mapped[int] = mapped_column(BigInteger)
    external_ref: Mapped[str | None] = mapped_column(String(100), unique=True)
    issued_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    issued_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    project: Mapped[Project] = relationship()
    methodology: Mapped[Methodology] = relationship()

    def serial_prefix(self) -> str:
        return serial_prefix(self.project_id, self.vintage, self.number)

    def serial(self, start: int, end: int) -> str:
        """Serial text of the range [start, end] of this batch, as in DESIGN.md."""
        return f"{self.serial_prefix()}-{start}-{end}"


class Block(Base):
    """A contiguous serial range [start, end] (kg) of one batch, in one account, in one status."""

    __tablename__ = "blocks"
    __table_args__ = (
        UniqueConstraint("batch_id", "start"),
        CheckConstraint("start >= 1", name="start_positive"),
        CheckConstraint('start <= "end"', name="start_le_end"),
        CheckConstraint('quantity = "end" - start + 1', name="quantity_is_range"),
        # Oldest vintage first within an account: the index serves the selection with a LIMIT, so a
        # transfer costs the same with a thousand blocks or a million.
        Index("ix_blocks_account_pick", "account_id", "status", "vintage", "batch_id", "start"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    vintage: Mapped[int] = mapped_column(Integer)
    start: Mapped[int] = mapped_column(BigInteger)
    end: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(BigInteger)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    status: Mapped[BlockStatus] = mapped_column(str_enum(BlockStatus, "block_status"))
    retirement_id: Mapped[int | None] = mapped_column(ForeignKey("retirements.id"), index=True)
    cancellation_id: Mapped[int | None] = mapped_column(ForeignKey("cancellations.id"), index=True)
    # Who locked a LISTED block, e.g. "order:42" (a sell order on the exchange). Opaque to the registry.
    hold_ref: Mapped[str | None] = mapped_column(String(40), index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    batch: Mapped[Batch] = relationship()
    account: Mapped[Account] = relationship()

    @property
    def is_final(self) -> bool:
        return self.status in (BlockStatus.RETIRED, BlockStatus.CANCELLED)

    def serial(self) -> str:
        return self.batch.serial(self.start, self.end)


class Transfer(Base):
    __tablename__ = "transfers"
    __table_args__ = (CheckConstraint("quantity_kg > 0", name="quantity_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    from_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    to_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    quantity_kg: Mapped[int] = mapped_column(BigInteger)
    memo: Mapped[str | None] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    from_account: Mapped[Account] = relationship(foreign_keys=[from_account_id])
    to_account: Mapped[Account] = relationship(foreign_keys=[to_account_id])


class Retirement(Base):
    """A final claim: the retired serials cannot move again. Its certificate number is public."""

    __tablename__ = "retirements"
    __table_args__ = (CheckConstraint("quantity_kg > 0", name="quantity_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    certificate_number: Mapped[str] = mapped_column(String(40), unique=True)
    holder_id: Mapped[int] = mapped_column(ForeignKey("holders.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    quantity_kg: Mapped[int] = mapped_column(BigInteger)
    beneficiary: Mapped[str] = mapped_column(String(200))
    jurisdiction: Mapped[str] = mapped_column(String(100))
    purpose: Mapped[RetirementPurpose] = mapped_column(str_enum(RetirementPurpose, "retirement_purpose"))
    footprint_ref: Mapped[str | None] = mapped_column(String(100))
    message: Mapped[str | None] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    retired_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)

    holder: Mapped[Holder] = relationship()


class Cancellation(Base):
    """The operator removes units from circulation (e.g. a correction); final like a retirement."""

    __tablename__ = "cancellations"
    __table_args__ = (CheckConstraint("quantity_kg > 0", name="quantity_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    from_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    to_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    quantity_kg: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Movement(Base):
    """One serial range touched by one event: the per-serial history is read from here."""

    __tablename__ = "movements"
    __table_args__ = (
        CheckConstraint('start <= "end"', name="start_le_end"),
        Index("ix_movements_batch_range", "batch_id", "start", "end"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    kind: Mapped[MovementKind] = mapped_column(str_enum(MovementKind, "movement_kind"))
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    start: Mapped[int] = mapped_column(BigInteger)
    end: Mapped[int] = mapped_column(BigInteger)
    from_account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    to_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    transfer_id: Mapped[int | None] = mapped_column(ForeignKey("transfers.id"))
    retirement_id: Mapped[int | None] = mapped_column(ForeignKey("retirements.id"))
    cancellation_id: Mapped[int | None] = mapped_column(ForeignKey("cancellations.id"))
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def quantity(self) -> int:
        return self.end - self.start + 1


class AuditRecord(Base):
    """Append-only. Written unsealed by each use case; a single sealer chains them in commit order.

    The chain fields (chain_seq, prev_hash, hash) are set once by `registry.audit.seal`; database
    triggers (see the migration) refuse DELETE and any UPDATE of a sealed record.
    """

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    actor_user_id: Mapped[int | None] = mapped_column(Integer)
    actor_holder_id: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(64), index=True)
    entity_type: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON, hashed as stored
    chain_seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))
    sealed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    __table_args__ = (Index("ix_audit_entity", "entity_type", "entity_id"),)


class IdempotencyRecord(Base):
    """The first response to a POST with an Idempotency-Key, replayed for any retry of it."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("scope", "key"),)

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    scope: Mapped[str] = mapped_column(String(64))   # who: "user:<id>" or "anon"
    key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(500))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
