"""Who is acting: every use case takes an Actor and checks its rights in the domain's terms."""

from __future__ import annotations

from dataclasses import dataclass

from registry.errors import Forbidden
from registry.models import HolderKind, User, UserRole


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: int | None
    holder_id: int
    holder_kind: HolderKind
    role: UserRole

    @classmethod
    def of(cls, user: User) -> Actor:
        return cls(user.id, user.holder_id, user.holder.kind, user.role)

    @property
    def is_operator(self) -> bool:
        return self.holder_kind is HolderKind.OPERATOR

    def require_kind(self, *kinds: HolderKind) -> None:
        if self.holder_kind not in kinds:
            names = ", ".join(k.value for k in kinds)
            raise Forbidden(f"only a {names} may do this", code="wrong_role")

    def require_can_move_units(self) -> None:
        if self.role is UserRole.VIEWER:
            raise Forbidden("a viewer cannot move units", code="wrong_role")

    def require_admin(self) -> None:
        if self.role is not UserRole.ADMIN:
            raise Forbidden("only an admin of the holder may do this", code="wrong_role")
