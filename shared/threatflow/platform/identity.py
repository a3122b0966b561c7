"""Who is calling: roles ordered by what they may do, and the authenticated principal.

These live in the platform because the HTTP pipeline checks roles; the auth
domain issues and verifies the tokens that carry them (`threatflow.auth`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

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
    clearance: str = "amber"  # the highest TLP this user may read (threatflow.auth.clearance)
    version: int = 0  # the user's security version the token was issued under


class Authenticator(Protocol):
    """Turns a bearer token into the current principal of the account it names, or raises AuthError.

    `strict` (routes above the reader role): the account's state (disabled, role,
    clearance, security version) is read from the database on this request, so a
    disable, role change or password rotation takes effect at once; otherwise a
    short per-instance cache may answer. The returned principal carries the
    account's current role and clearance, not the token's.

    The HTTP pipeline is given one (`Router(authenticator=...)`); the auth domain
    provides the implementation (`threatflow.auth.service.BearerAuthenticator`).
    """

    def __call__(self, token: str, *, strict: bool) -> Principal: ...
