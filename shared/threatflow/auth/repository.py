"""The users table, through plain parameterised SQL."""

from __future__ import annotations

import builtins
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
    clearance: str = "amber"
    security_version: int = 0

    def principal(self) -> Principal:
        return Principal(user_id=self.id, username=self.username, role=self.role, clearance=self.clearance, version=self.security_version)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role.value,
            "disabled": self.disabled,
            "clearance": self.clearance,
            "created_at": self.created_at,
            "last_login_at": self.last_login_at,
        }


_COLUMNS = "id, username, password_hash, role, disabled, created_at, last_login_at, clearance, security_version"


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], Role(row[3]), row[4], row[5], row[6], row[7], int(row[8]))


@dataclass(frozen=True)
class SecurityState:
    """What decides whether a token still works: checked on every write and admin request."""

    disabled: bool
    role: Role
    clearance: str
    version: int


class UserRepository:
    """The auth domain's one repository, bound to the caller's connection (its unit of work):
    it never opens or commits a transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get_by_username(self, username: str, *, for_update: bool = False) -> User | None:
        """`for_update`: lock the row until the caller's transaction ends, so a check made on it holds for a later
        update in the same transaction (a concurrent change waits, or is waited for)."""
        from sqlalchemy import text

        lock = " FOR UPDATE" if for_update else ""
        row = self._conn.execute(
            text(f"SELECT {_COLUMNS} FROM users WHERE lower(username) = lower(:u){lock}"),
            {"u": username},
        ).first()
        return _user(row) if row else None

    def create(self, *, username: str, password_hash: str, role: Role, clearance: str) -> User | None:
        """Insert; None when the username is taken."""
        from sqlalchemy import text

        row = self._conn.execute(
            text(
                "INSERT INTO users (username, password_hash, role, clearance) VALUES (:u, :h, :r, :c)"
                f" ON CONFLICT DO NOTHING RETURNING {_COLUMNS}"
            ),
            {"u": username, "h": password_hash, "r": role.value, "c": clearance},
        ).first()
        return _user(row) if row else None

    def list(self, *, after_id: int = 0, limit: int = 100) -> list[User]:
        from sqlalchemy import text

        rows = self._conn.execute(
            text(f"SELECT {_COLUMNS} FROM users WHERE id > :a ORDER BY id LIMIT :l"),
            {"a": after_id, "l": limit},
        )
        return [_user(r) for r in rows]

    def set_disabled(self, username: str, disabled: bool) -> str | None:
        """The account's stored username, or None when there is none."""
        from sqlalchemy import text

        row = self._conn.execute(
            text(
                "UPDATE users SET disabled = :d, security_version = security_version + 1, updated_at = now()"
                " WHERE lower(username) = lower(:u) RETURNING username"
            ),
            {"d": disabled, "u": username},
        ).first()
        return str(row[0]) if row else None

    def bump_security_version(self, username: str) -> str | None:
        """End every token of the account (they carry the old version as `ver`); its stored username, or None."""
        from sqlalchemy import text

        row = self._conn.execute(
            text(
                "UPDATE users SET security_version = security_version + 1, updated_at = now()"
                " WHERE lower(username) = lower(:u) RETURNING username"
            ),
            {"u": username},
        ).first()
        return str(row[0]) if row else None

    def update(self, username: str, *, role: Role | None, clearance: str | None, password_hash: str | None) -> User | None:
        """Change role, clearance and/or password; a role or password change invalidates the user's tokens."""
        from sqlalchemy import text

        bump = role is not None or password_hash is not None
        row = self._conn.execute(
            text(
                "UPDATE users SET role = COALESCE(:r, role), clearance = COALESCE(:c, clearance),"
                " password_hash = COALESCE(:h, password_hash),"
                " security_version = security_version + CASE WHEN :bump THEN 1 ELSE 0 END, updated_at = now()"
                f" WHERE lower(username) = lower(:u) RETURNING {_COLUMNS}"
            ),
            {"r": role.value if role else None, "c": clearance, "h": password_hash, "bump": bump, "u": username},
        ).first()
        return _user(row) if row else None

    def lock_admin_changes(self) -> None:
        """Serialise, until the caller's transaction ends, the changes that may take an account's enabled admin role
        away (a demotion, a disable): each counts the other enabled admins after taking it, so of two admins demoting
        each other at once the second sees the first's demotion. A transaction-level advisory lock: no row of the
        table is locked beyond the changed account's, so logins and other changes go on."""
        from sqlalchemy import text

        self._conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('threatflow.users.enabled_admins', 0))"))

    def enabled_admins_besides(self, user_id: int) -> int:
        """How many enabled admins there are other than `user_id`."""
        from sqlalchemy import text

        row = self._conn.execute(
            text("SELECT count(*) FROM users WHERE role = 'admin' AND NOT disabled AND id <> :i"), {"i": user_id}
        ).first()
        return int(row[0]) if row else 0

    def security_state(self, user_id: int) -> SecurityState | None:
        from sqlalchemy import text

        row = self._conn.execute(
            text("SELECT disabled, role, clearance, security_version FROM users WHERE id = :i"), {"i": user_id}
        ).first()
        return SecurityState(bool(row[0]), Role(row[1]), str(row[2]), int(row[3])) if row else None

    def record_event(self, kind: str, *, username: str, client_ip: str | None, detail: dict[str, Any]) -> None:
        """The security audit log (lockouts, disables, role changes); admins list it."""
        import json

        from sqlalchemy import text

        self._conn.execute(
            text("INSERT INTO security_events (kind, username, client_ip, detail) VALUES (:k, :u, :ip, CAST(:d AS jsonb))"),
            {"k": kind, "u": username, "ip": client_ip, "d": json.dumps(detail, default=str)},
        )

    def events(self, *, before_id: int | None, limit: int) -> builtins.list[dict[str, Any]]:
        from sqlalchemy import text

        rows = self._conn.execute(
            text(
                "SELECT id, at, kind, username, client_ip, detail FROM security_events"
                " WHERE (CAST(:b AS bigint) IS NULL OR id < :b) ORDER BY id DESC LIMIT :l"
            ),
            {"b": before_id, "l": limit},
        )
        return [{"id": int(r[0]), "at": r[1], "kind": r[2], "username": r[3], "client_ip": r[4], "detail": r[5]} for r in rows]

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
