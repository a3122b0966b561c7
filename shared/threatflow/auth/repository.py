"""The users table, through plain parameterised SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from threatflow.auth.model import Principal, Role

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class User:
    id: int
    username: str
    password_hash: str
    role: Role
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None

    def principal(self) -> Principal:
        return Principal(user_id=self.id, username=self.username, role=self.role)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role.value,
            "disabled": self.disabled,
            "created_at": self.created_at,
            "last_login_at": self.last_login_at,
        }


_COLUMNS = "id, username, password_hash, role, disabled, created_at, last_login_at"


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], Role(row[3]), row[4], row[5], row[6])


class UserRepository:
    """The auth domain's one repository, bound to the caller's connection (its unit of work):
    it never opens or commits a transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get_by_username(self, username: str) -> User | None:
        from sqlalchemy import text

        row = self._conn.execute(
            text(f"SELECT {_COLUMNS} FROM users WHERE lower(username) = lower(:u)"),
            {"u": username},
        ).first()
        return _user(row) if row else None

    def create(self, *, username: str, password_hash: str, role: Role) -> User | None:
        """Insert; None when the username is taken."""
        from sqlalchemy import text

        row = self._conn.execute(
            text(f"INSERT INTO users (username, password_hash, role) VALUES (:u, :h, :r) ON CONFLICT DO NOTHING RETURNING {_COLUMNS}"),
            {"u": username, "h": password_hash, "r": role.value},
        ).first()
        return _user(row) if row else None

    def list(self, *, after_id: int = 0, limit: int = 100) -> list[User]:
        from sqlalchemy import text

        rows = self._conn.execute(
            text(f"SELECT {_COLUMNS} FROM users WHERE id > :a ORDER BY id LIMIT :l"),
            {"a": after_id, "l": limit},
        )
        return [_user(r) for r in rows]

    def set_disabled(self, username: str, disabled: bool) -> bool:
        from sqlalchemy import text

        result = self._conn.execute(
            text("UPDATE users SET disabled = :d, updated_at = now() WHERE lower(username) = lower(:u)"),
            {"d": disabled, "u": username},
        )
        return bool(result.rowcount)

    def set_password_hash(self, user_id: int, password_hash: str) -> None:
        from sqlalchemy import text

        self._conn.execute(
            text("UPDATE users SET password_hash = :h, updated_at = now() WHERE id = :i"),
            {"h": password_hash, "i": user_id},
        )

    def record_login(self, user_id: int) -> None:
        from sqlalchemy import text

        self._conn.execute(text("UPDATE users SET last_login_at = now() WHERE id = :i"), {"i": user_id})

    def is_active(self, user_id: int) -> bool:
        from sqlalchemy import text

        row = self._conn.execute(text("SELECT disabled FROM users WHERE id = :i"), {"i": user_id}).first()
        return bool(row is not None and not row[0])
