"""Holders, their accounts, users, bearer tokens; suspension of a holder by the operator."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload
from werkzeug.security import check_password_hash, generate_password_hash

from registry import audit
from registry.actors import Actor
from registry.db import utcnow
from registry.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from registry.models import (
    Account,
    AccountKind,
    ApiToken,
    Holder,
    HolderKind,
    User,
    UserRole,
)

TOKEN_PREFIX = "thk_"


def _account_number(holder_id: int, kind: AccountKind) -> str:
    letter = {AccountKind.HOLDING: "H", AccountKind.RETIREMENT: "R", AccountKind.CANCELLATION: "C"}[kind]
    return f"TH-{letter}-{holder_id:06d}"


def create_holder(session: Session, actor: Actor | None, *, kind: HolderKind | str, name: str,
                  name_en: str | None = None, credit_code: str | None = None,
                  province: str | None = None, city: str | None = None) -> Holder:
    """Open a holder with its holding and retirement accounts (operators also get a cancellation
    account). `actor` is the operator opening it, or None for bootstrap and the demo seed."""
    if actor is not None:
        actor.require_kind(HolderKind.OPERATOR)
    try:
        kind = HolderKind(kind)
    except ValueError:
        raise InvalidInput(f"unknown holder kind {kind!r}", field="kind") from None
    if not name or not name.strip():
        raise InvalidInput("a holder needs a name", field="name")
    if credit_code and session.scalar(select(Holder.id).where(Holder.credit_code == credit_code)):
        raise Conflict("a holder with this credit code exists", field="credit_code", code="duplicate")
    holder = Holder(kind=kind, name=name.strip(), name_en=name_en, credit_code=credit_code,
                    province=province, city=city, suspended=False)
    session.add(holder)
    session.flush()
    kinds = [AccountKind.HOLDING, AccountKind.RETIREMENT]
    if kind is HolderKind.OPERATOR:
        kinds.append(AccountKind.CANCELLATION)
    for k in kinds:
        session.add(Account(holder_id=holder.id, kind=k, number=_account_number(holder.id, k)))
    session.flush()
    audit.record(session, actor, "holder.created", "holder", holder.id,
                 {"kind": kind.value, "name": holder.name, "credit_code": credit_code, "city": city})
    return holder


def account_of(session: Session, holder_id: int, kind: AccountKind = AccountKind.HOLDING) -> Account:
    acc = session.scalar(select(Account).where(Account.holder_id == holder_id, Account.kind == kind))
    if acc is None:
        raise NotFound(f"holder {holder_id} has no {kind.value} account", field="account")
    return acc


def account_by_number(session: Session, number: str, field: str = "to_account") -> Account:
    acc = session.scalar(select(Account).where(Account.number == number))
    if acc is None:
        raise NotFound(f"no account {number!r}", field=field)
    return acc


def create_user(session: Session, *, holder_id: int, email: str, name: str,
                role: UserRole | str = UserRole.ADMIN, password: str | None = None,
                actor: Actor | None = None) -> User:
    """Add a user to a holder. `actor` (None for bootstrap, the CLI and the seed) must be the operator
    or an admin of that holder; another holder's is NotFound."""
    if actor is not None and not actor.is_operator:
        if actor.holder_id != holder_id:
            raise NotFound(f"no holder {holder_id}", field="holder_id")
        actor.require_admin()
    try:
        role = UserRole(role)
    except ValueError:
        raise InvalidInput(f"unknown role {role!r}", field="role") from None
    email = email.strip().lower()
    if "@" not in email:
        raise InvalidInput("not an email address", field="email")
    if session.get(Holder, holder_id) is None:
        raise NotFound(f"no holder {holder_id}", field="holder_id")
    if session.scalar(select(User.id).where(User.email == email)):
        raise Conflict("a user with this email exists", field="email", code="duplicate")
    user = User(holder_id=holder_id, email=email, name=name, role=role, active=True,
                password_hash=generate_password_hash(password) if password else None)
    session.add(user)
    session.flush()
    audit.record(session, actor, "user.created", "user", user.id,
                 {"holder_id": holder_id, "email": email, "role": role.value})
    return user


def _hash_token(token: str) -> str:
    # Tokens are 256 bits of randomness, so a fast hash is enough at rest (unlike passwords).
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, user: User, name: str = "api",
                 ttl: dt.timedelta | None = None) -> tuple[ApiToken, str]:
    """Returns the stored token row and the token text, which is never stored and shown only now."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, token_hash=_hash_token(token), prefix=token[:12], name=name,
                   expires_at=utcnow() + ttl if ttl else None)
    session.add(row)
    session.flush()
    audit.record(session, Actor.of(user), "token.created", "api_token", row.id,
                 {"user_id": user.id, "name": name, "prefix": row.prefix})
    return row, token


def authenticate(session: Session, token: str) -> tuple[User, ApiToken]:
    """Resolve a bearer token to its active user. Raises Unauthenticated."""
    # Token, user and holder in one query: every authenticated request starts here.
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _hash_token(token))
                         .options(joinedload(ApiToken.user).joinedload(User.holder)))
    if row is None or row.revoked_at is not None:
        raise Unauthenticated("invalid or revoked token")
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise Unauthenticated("token expired")
    user = row.user
    if not user.active:
        raise Unauthenticated("user is deactivated")
    return user, row


def login(session: Session, email: str, password: str, ttl: dt.timedelta | None) -> tuple[User, str]:
    user = session.scalar(select(User).where(User.email == (email or "").strip().lower()))
    # Same answer for an unknown email and a wrong password.
    if user is None or not user.active or not user.password_hash or not check_password_hash(
            user.password_hash, password or ""):
        raise Unauthenticated("wrong email or password", field="password")
    _, token = create_token(session, user, name="login", ttl=ttl)
    return user, token


def revoke_token(session: Session, actor: Actor, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != actor.user_id and not (
            actor.role is UserRole.ADMIN and row.user.holder_id == actor.holder_id)):
        raise NotFound("no such token", field="token_id")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit.record(session, actor, "token.revoked", "api_token", row.id, {"user_id": row.user_id})
    return row


def set_holder_suspension(session: Session, actor: Actor, holder_id: int, suspended: bool,
                          reason: str) -> Holder:
    """Operator only. A suspended holder's units cannot move until the suspension is lifted."""
    actor.require_kind(HolderKind.OPERATOR)
    if not reason or not reason.strip():
        raise InvalidInput("a reason is required", field="reason")
    holder = session.get(Holder, holder_id, with_for_update={"key_share": True})
    if holder is None:
        raise NotFound(f"no holder {holder_id}", field="holder_id")
    if holder.suspended == suspended:
        raise Conflict("holder is already " + ("suspended" if suspended else "active"),
                       field="holder_id", code="no_change")
    holder.suspended = suspended
    holder.suspension_reason = reason.strip() if suspended else None
    audit.record(session, actor, "holder.suspended" if suspended else "holder.reinstated", "holder",
                 holder.id, {"reason": reason.strip()})
    return holder
