"""Who is calling: roles ordered by what they may do, and the authenticated principal."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from threatflow.platform.errors import ValidationError


class Role(StrEnum):
    READER = "reader"
    ANALYST = "analyst"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, required: Role) -> bool:
        return self.rank >= required.rank

    @classmethod
    def parse(cls, value: str, *, field: str = "role") -> Role:
        try:
            return cls(value.lower())
        except ValueError:
            raise ValidationError(f"unknown role {value!r}; expected one of admin, analyst, reader", field=field) from None


_RANK = {Role.READER: 0, Role.ANALYST: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    role: Role
    clearance: str = "amber"  # the highest TLP this user may read (auth/clearance.py)
    version: int = 0  # the user's security version the token was issued under
