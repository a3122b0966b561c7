"""Authentication use cases: log in, check a bearer token, manage users."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from threatflow.auth import passwords, tokens
from threatflow.auth.model import Principal, Role
from threatflow.auth.repository import User, UserRepository
from threatflow.platform.errors import AuthError, ConflictError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from threatflow.platform.config import Settings

_ACTIVE_CACHE_SECONDS = 30.0
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{1,63}")  # the same rule as the users table CHECK


def login(*, username: str, password: str, users: UserRepository, config: tokens.TokenSettings, now: datetime) -> dict[str, Any]:
    user = users.get_by_username(username)
    ok = passwords.verify_password(user.password_hash if user else None, password)
    if not ok or user is None or user.disabled:
        raise AuthError("invalid username or password")
    if passwords.needs_rehash(user.password_hash):
        users.set_password_hash(user.id, passwords.hash_password(password))
    users.record_login(user.id)
    token, expires_in = tokens.issue(user.principal(), config=config, now=now)
    return {"access_token": token, "token_type": "bearer", "expires_in": expires_in}


class ActiveUserCheck:
    """Remembers for a short while that a user is enabled, so disabling a user
    takes effect within 30 s without a database query on every request."""

    def __init__(self, is_active: Callable[[int], bool]) -> None:
        self._is_active = is_active
        self._seen: dict[int, float] = {}
        self._lock = threading.Lock()

    def __call__(self, principal: Principal) -> None:
        now = time.monotonic()
        with self._lock:
            checked = self._seen.get(principal.user_id)
        if checked is not None and now - checked < _ACTIVE_CACHE_SECONDS:
            return
        if not self._is_active(principal.user_id):
            raise AuthError("user is disabled or no longer exists")
        with self._lock:
            self._seen[principal.user_id] = now


class BearerAuthenticator:
    """The `platform.identity.Authenticator` of every HTTP function: verifies the
    token's signature and expiry, then that the user is still enabled.

    The token settings are read on the first request, so building a router needs
    no JWT_SECRET; `is_active(user_id)` runs its own short read (the wiring opens it)."""

    def __init__(self, *, settings: Settings, is_active: Callable[[int], bool]) -> None:
        self._settings = settings
        self._config: tokens.TokenSettings | None = None
        self._active = ActiveUserCheck(is_active)

    def __call__(self, token: str) -> Principal:
        if self._config is None:
            self._config = tokens.TokenSettings.from_settings(self._settings)
        principal = tokens.verify(token, config=self._config)
        self._active(principal)
        return principal


def create_user(*, username: str, password: str, role: Role, users: UserRepository) -> User:
    if len(password) < passwords.MIN_PASSWORD_LENGTH:
        raise ValidationError(f"password must be at least {passwords.MIN_PASSWORD_LENGTH} characters", field="password")
    if len(password) > passwords.MAX_PASSWORD_LENGTH:
        raise ValidationError("password is too long", field="password")
    if not _USERNAME.fullmatch(username):
        raise ValidationError("username: 2-64 characters, letters, digits and . _ @ -, starting with a letter or digit", field="username")
    user = users.create(username=username, password_hash=passwords.hash_password(password), role=role)
    if user is None:
        raise ConflictError(f"user {username!r} already exists", details={"field": "username"})
    return user


def set_disabled(*, username: str, disabled: bool, users: UserRepository) -> None:
    if not users.set_disabled(username, disabled):
        raise NotFoundError(f"no user named {username!r}")
